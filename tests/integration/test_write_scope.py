"""Writes pass the same policy as reads (issue #12, item 4), over a real `medvault serve`.

A radiologist granted one patient may store that patient's studies and nothing else; an instance
whose patient differs from its study's is refused with the reason; and a refusal reads the same
whether or not the study or instance out of scope exists, so STOW is no existence oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import UID, generate_uid

from medvault.home import open_home
from tests.conftest import Server, start_server
from tests.integration.test_access_routes import (
    activate,
    add_person,
    anonymous,
    bearer,
    make_instance,
    quiet_home,
    store,
    stow,
)
from tests.integration.test_stow import to_bytes

pytestmark = pytest.mark.integration

FAILED, REFERENCED, REASON, COMMENT = "00081198", "00081199", "00081197", "00000902"
NOT_AUTHORIZED = 0x0124


@dataclass
class World:
    server: Server
    tokens: dict[str, str]
    a_study: str
    b_study: str
    b_sop: str
    b_series: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = quiet_home(Path(tmp_path_factory.mktemp("write-scope")) / "home")
    opened = open_home(home.root, home.passphrase)
    try:
        people = [
            add_person(opened, "rad-a", ["radiologist"], grants=[("patient", "WRITE-A")]),
            add_person(opened, "rad-site", ["radiologist"], grants=[("site", "*")]),
        ]
    finally:
        opened.close()
    a_data, a_ds = make_instance(patient_id="WRITE-A", patient_name="Write^A")
    b_data, b_ds = make_instance(patient_id="WRITE-B", patient_name="Write^B")
    server = start_server(home)
    try:
        store(server, a_data, b_data)
        yield World(
            server,
            activate(server, *people),
            a_ds.StudyInstanceUID,
            b_ds.StudyInstanceUID,
            b_ds.SOPInstanceUID,
            b_ds.SeriesInstanceUID,
        )
    finally:
        server.stop()


def client_of(world: World, user: str) -> httpx.Client:
    client = anonymous(world.server)
    client.headers.update(bearer(world.tokens[user]))
    return client


def refusal(response: httpx.Response) -> tuple[int, int, str, str]:
    """What a refused single-instance STOW tells the client: status, reason code, comment, warning
    (with the part number and UIDs, which the client sent itself, left as they are)."""
    failed = response.json()[FAILED]["Value"]
    assert len(failed) == 1 and REFERENCED not in response.json(), response.text
    item = failed[0]
    return (
        response.status_code,
        item[REASON]["Value"][0],
        item[COMMENT]["Value"][0],
        response.headers["warning"],
    )


def instances_of(world: World, study: str) -> list[str]:
    with world.server.client() as archivist:
        answer = archivist.get(f"/dicomweb/studies/{study}/instances")
    assert answer.status_code in (200, 204), answer.text
    return [item["00080018"]["Value"][0] for item in answer.json()] if answer.content else []


def test_a_writer_stores_within_its_scope(world: World) -> None:
    data, _ = make_instance(patient_id="WRITE-A", patient_name="Write^A", study_uid=world.a_study)
    with client_of(world, "rad-a") as client:
        assert stow(client, data).status_code == 200
        fresh, _ = make_instance(patient_id="WRITE-A", patient_name="Write^A")
        assert stow(client, fresh).status_code == 200


def test_out_of_scope_writes_are_refused_alike_and_change_nothing(world: World) -> None:
    before = instances_of(world, world.b_study)
    b: dict[str, Any] = {"patient_id": "WRITE-B", "patient_name": "Write^B"}
    a: dict[str, Any] = {"patient_id": "WRITE-A"}
    cases: dict[str, Any] = {
        "into B's study": make_instance(**b, study_uid=world.b_study),  # B's instance, B's study
        "A into B's study": make_instance(**a, study_uid=world.b_study),  # the study decides
        "new study of B": make_instance(**b),  # nothing of it exists
    }
    with client_of(world, "rad-a") as client:
        answers = {name: refusal(stow(client, data)) for name, (data, _) in cases.items()}
        # B's stored SOP instance re-sent with other bytes, inside a study of A's: no "already stored"
        ds = make_instance(patient_id="WRITE-A", patient_name="Write^A")[1]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(world.b_sop)
        answers["B's SOP UID, other bytes"] = refusal(stow(client, to_bytes(ds)))
    assert len(set(answers.values())) == 1, answers
    status, reason, _comment, warning = next(iter(answers.values()))
    assert status == 403 and reason == NOT_AUTHORIZED
    assert "outside the writer's scope" in warning and "already" not in warning
    assert instances_of(world, world.b_study) == before


def test_an_instance_of_another_patient_is_refused_with_the_reason(world: World) -> None:
    """Even a writer who may write everywhere cannot put patient A's instance into B's study."""
    data, _ = make_instance(
        patient_id="WRITE-A", patient_name="Write^A", study_uid=world.b_study, series_uid=world.b_series
    )
    before = instances_of(world, world.b_study)
    with client_of(world, "rad-site") as client:
        answer = stow(client, data)
        assert answer.status_code == 409, answer.text
        assert "PatientID differs" in answer.headers["warning"]
        # within one request too: two patients in one new study
        study = generate_uid()
        first, _ = make_instance(patient_id="WRITE-C", patient_name="Write^C", study_uid=study)
        second, _ = make_instance(patient_id="WRITE-D", patient_name="Write^D", study_uid=study)
        mixed = stow(client, first, second)
    assert mixed.status_code == 202, mixed.text
    assert len(mixed.json()[FAILED]["Value"]) == 1 and len(mixed.json()[REFERENCED]["Value"]) == 1
    assert instances_of(world, world.b_study) == before
