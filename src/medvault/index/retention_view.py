"""What retention needs to know about each stored study, read from the index in one pass.

The dates a rule needs (StudyDate, PatientBirthDate) are PHI and stay sealed in the study's
document at rest; they are opened here, in memory, for the decision only, and nothing derived
from them is written anywhere (the retention report shows the date a study may go, never a
birth date). Modalities and the department token come from clear columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select

from medvault.index import schema as t
from medvault.index.store import Index, StudyFacts, _facts

_BATCH = 500
TAG_STUDY_DATE = "00080020"
TAG_BIRTH_DATE = "00100030"


@dataclass(frozen=True)
class StudyProfile:
    facts: StudyFacts  # study UID, patient and department tokens
    modalities: frozenset[str]
    study_date: date | None  # None: absent or not a valid DA value
    birth_date: date | None
    instances: int


def parse_da(value: object) -> date | None:
    """A DICOM DA value (YYYYMMDD, or the ACR-NEMA YYYY.MM.DD) as a date, else None."""
    if not isinstance(value, str):
        return None
    text = value.strip().replace(".", "")
    if len(text) != 8 or not (text.isascii() and text.isdigit()):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _first(doc: dict[str, object], tag: str) -> object:
    element = doc.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def study_profiles(index: Index) -> Iterator[StudyProfile]:
    """Every stored study, in storage order (batches of 500; each batch read in one go)."""
    last_id = 0
    columns = (
        t.studies.c.id,
        t.studies.c.study_uid,
        t.studies.c.doc,
        t.studies.c.patient_id_tok,
        t.studies.c.referring_tok,
        t.studies.c.department_tok,
    )
    while True:
        with index.engine.connect() as conn:
            rows = conn.execute(
                select(*columns).where(t.studies.c.id > last_id).order_by(t.studies.c.id).limit(_BATCH)
            ).all()
            if not rows:
                return
            last_id = rows[-1].id
            counts = index.study_counts([r.id for r in rows], conn=conn)
        for row in rows:
            doc = index._open(row.doc, "study/" + row.study_uid)
            yield StudyProfile(
                facts=_facts(row, row.id),
                modalities=frozenset(counts[row.id].modalities),
                study_date=parse_da(_first(doc, TAG_STUDY_DATE)),
                birth_date=parse_da(_first(doc, TAG_BIRTH_DATE)),
                instances=counts[row.id].instances,
            )
