from __future__ import annotations

import medvault.dicom


def test_public_names_are_what_we_meant() -> None:
    assert set(medvault.dicom.__all__) == {
        "DEFAULT_RETURN_TAGS",
        "INSTANCE_LEVEL_TAGS",
        "SERIES_LEVEL_TAGS",
        "STUDY_LEVEL_TAGS",
        "Criterion",
        "FrameLocation",
        "Level",
        "MatchKind",
        "ParsedInstance",
        "dataset_to_json",
        "decode_frame",
        "is_valid_uid",
        "json_to_dataset",
        "level_attributes",
        "normalize_for_exact",
        "parse_criterion",
        "parse_instance",
        "render_frame",
        "resolve_attribute",
        "thumbnail",
        "uncompressed_frame",
        "with_bulk_data_base",
    }
    for name in medvault.dicom.__all__:
        assert hasattr(medvault.dicom, name)
