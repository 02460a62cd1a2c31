"""Who sees which studies (issue #3, "Tests"): patient, study and department grants, the referring
physician, break-glass, and the privacy-training gate, over a real `medvault serve`.

Out of scope, a study does not exist: QIDO leaves it out (counts and paging included) and every
WADO route answers exactly as for a study that is not stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medvault.home import open_home
from tests.conftest import Server, start_server
from tests.integration.test_access_routes import (
    AS_STORED,
    Person,
    activate,
    add_person,
    anonymous,
    bearer,
    instance_path,
    make_instance,
    person_from_cli,
    quiet_home,
    store,
)

pytestmark = pytest.mark.integration

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
SERIES_IN_STUDY, INSTANCES_IN_STUDY, INSTANCES_IN_SERIES = "00201206", "00201208", "00201209"


@dataclass
class Study:
    uid: str
    instances: list[Dataset]

    @property
    def first(self) -> Dataset:
        return self.instances[0]

    @property
    def series(self) -> list[str]:
        return list(dict.fromkeys(ds.SeriesInstanceUID for ds in self.instances))


@dataclass
class World:
    server: Server
    studies: dict[str, Study]
    tokens: dict[str, str]
    people: dict[str, Person]


def new_study(
    patient_id: str, series_sizes: list[int], *, referring: str | None, department: str | None
) -> tuple[Study, list[bytes]]:
    study_uid = generate_uid()
    datas, instances = [], []
    for size in series_sizes:
        series_uid = generate_uid()
        for number in range(1, size + 1):
            data, ds = make_instance(
                patient_id=patient_id,
                patient_name=f"Scope^{patient_id}",
                study_uid=study_uid,
                series_uid=series_uid,
                referring=referring,
                department=department,
                instance_number=number,
            )
            datas.append(data)
            instances.append(ds)
    return Study(study_uid, instances), datas


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = quiet_home(Path(tmp_path_factory.mktemp("access-scopes")) / "home")
    # Stored in this order, so that paging over the visible studies differs from paging over all.
    plan = {
        "p2a": ("SCOPE-P2", [1], "ROE^JANE", "CARDIOLOGY"),
        "p1a": ("SCOPE-P1", [2, 1], "DOE^JOHN", "CARDIOLOGY"),
        "p2b": ("SCOPE-P2", [1], "DOE^JOHN", "ONCOLOGY"),
        "p1b": ("SCOPE-P1", [2], "ROE^JANE", "RADIOLOGY"),
        "p3": ("SCOPE-P3", [1], None, None),
    }
    studies: dict[str, Study] = {}
    datas: dict[str, list[bytes]] = {}
    for key, (patient, sizes, referring, department) in plan.items():
        studies[key], datas[key] = new_study(patient, sizes, referring=referring, department=department)

    opened = open_home(home.root, home.passphrase)
    try:
        people = {
            "rad-study": add_person(
                opened, "rad-study", ["radiologist"], grants=[("study", studies["p2a"].uid)]
            ),
            "rad-dept": add_person(
                opened, "rad-dept", ["radiologist"], grants=[("department", "CARDIOLOGY")]
            ),
            "ref-doe": add_person(opened, "ref-doe", ["referring_physician"]),
            "rad-bg": add_person(opened, "rad-bg", ["radiologist"]),
            "tech": add_person(opened, "tech", ["technologist"]),
            "auditor": add_person(opened, "auditor", ["auditor"]),
            "trainee": add_person(opened, "trainee", ["radiologist"], grants=[("site", "*")]),
            "untrained": add_person(
                opened, "untrained", ["radiologist"], training=None, grants=[("site", "*")]
            ),
        }
    finally:
        opened.close()
    # The documented way, as an administrator would: `medvault users add / grant / referring`.
    added = home.cli("users", "add", "rad-patient", "--roles", "radiologist", "--training", "2030-01-01")
    people["rad-patient"] = person_from_cli("rad-patient", added.stdout)
    home.cli("users", "grant", "rad-patient", "patient", "SCOPE-P1")
    home.cli("users", "referring", "ref-doe", "DOE^JOHN")

    server = start_server(home)
    try:
        for key in plan:
            store(server, *datas[key])
        tokens = activate(server, *people.values())
        yield World(server, studies, tokens, people)
    finally:
        server.stop()


def client_of(world: World, user: str) -> httpx.Client:
    client = anonymous(world.server)
    client.headers.update(bearer(world.tokens[user]))
    return client


def uids(answer: httpx.Response, tag: str = STUDY_UID) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [item[tag]["Value"][0] for item in answer.json()]


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def wado_paths(study: Study) -> list[str]:
    ds = study.first
    base = f"/dicomweb/studies/{study.uid}"
    inst = instance_path(ds)
    return [
        base,
        base + "/metadata",
        base + "/thumbnail",
        f"{base}/series/{ds.SeriesInstanceUID}",
        f"{base}/series/{ds.SeriesInstanceUID}/metadata",
        f"{base}/series/{ds.SeriesInstanceUID}/thumbnail",
        inst,
        inst + "/metadata",
        inst + "/frames/1",
        inst + "/rendered",
        inst + "/frames/1/rendered",
        inst + "/thumbnail",
        inst + "/bulkdata/7FE00010",
    ]


def missing_like(path: str, study: Study) -> str:
    ds = study.first
    return (
        path.replace(study.uid, generate_uid())
        .replace(ds.SeriesInstanceUID, generate_uid())
        .replace(ds.SOPInstanceUID, generate_uid())
    )


def assert_hidden(client: httpx.Client, study: Study) -> None:
    """Every WADO route answers for ``study`` exactly as for a study that does not exist."""
    for path in wado_paths(study):
        hidden = client.get(path)
        missing = client.get(missing_like(path, study))
        assert hidden.status_code == 404, (path, hidden.status_code, hidden.text)
        assert (hidden.content, hidden.headers["content-type"]) == (
            missing.content,
            missing.headers["content-type"],
        ), path
    assert client.get(f"/dicomweb/studies/{study.uid}/series").json() == []
    assert client.get(f"/dicomweb/studies/{study.uid}/instances").json() == []
    assert client.get("/dicomweb/series", params={"StudyInstanceUID": study.uid}).json() == []


def assert_readable(client: httpx.Client, study: Study) -> None:
    for path in wado_paths(study):
        response = client.get(
            path, headers={"Accept": "*/*"} if "rendered" in path or "thumbnail" in path else {}
        )
        assert response.status_code == 200, (path, response.status_code, response.text)


def test_the_archive_holds_all_five_studies(world: World) -> None:
    with world.server.client() as archivist:
        assert len(archivist.get("/dicomweb/studies").json()) == 5


# -- patient grant ---------------------------------------------------------------------------------


def test_patient_grant_qido_studies_shows_only_that_patient_with_true_counts(world: World) -> None:
    p1a, p1b = world.studies["p1a"], world.studies["p1b"]
    with client_of(world, "rad-patient") as client:
        answer = client.get("/dicomweb/studies")
    assert uids(answer) == [p1a.uid, p1b.uid]
    by_uid = {value(item, STUDY_UID): item for item in answer.json()}
    assert value(by_uid[p1a.uid], SERIES_IN_STUDY) == 2
    assert value(by_uid[p1a.uid], INSTANCES_IN_STUDY) == 3
    assert value(by_uid[p1b.uid], SERIES_IN_STUDY) == 1
    assert value(by_uid[p1b.uid], INSTANCES_IN_STUDY) == 2
    assert "SCOPE-P2" not in answer.text and "SCOPE-P3" not in answer.text


def test_patient_grant_qido_series_and_instances(world: World) -> None:
    p1a, p1b = world.studies["p1a"], world.studies["p1b"]
    with client_of(world, "rad-patient") as client:
        series = client.get("/dicomweb/series")
        instances = client.get("/dicomweb/instances")
    assert uids(series, SERIES_UID) == p1a.series + p1b.series
    counts = {value(item, SERIES_UID): value(item, INSTANCES_IN_SERIES) for item in series.json()}
    assert counts == {p1a.series[0]: 2, p1a.series[1]: 1, p1b.series[0]: 2}
    assert uids(instances, SOP_UID) == [ds.SOPInstanceUID for ds in p1a.instances + p1b.instances]
    assert set(uids(instances)) == {p1a.uid, p1b.uid}


def test_paging_counts_only_visible_studies(world: World) -> None:
    p1a, p1b = world.studies["p1a"], world.studies["p1b"]
    with client_of(world, "rad-patient") as client:
        assert uids(client.get("/dicomweb/studies", params={"limit": "1"})) == [p1a.uid]
        assert uids(client.get("/dicomweb/studies", params={"limit": "1", "offset": "1"})) == [p1b.uid]
        assert uids(client.get("/dicomweb/studies", params={"offset": "2"})) == []
        first = uids(client.get("/dicomweb/instances", params={"limit": "2", "offset": "2"}), SOP_UID)
        assert first == [p1a.instances[2].SOPInstanceUID, p1b.instances[0].SOPInstanceUID]


def test_patient_grant_searching_for_another_patient_finds_nothing(world: World) -> None:
    with client_of(world, "rad-patient") as client:
        for level in ("studies", "series", "instances"):
            for params in ({"PatientID": "SCOPE-P2"}, {"StudyInstanceUID": world.studies["p2a"].uid}):
                answer = client.get(f"/dicomweb/{level}", params=params)
                assert answer.status_code == 200 and answer.json() == [], (level, params)


def test_patient_grant_wado_of_another_patient_is_404_like_a_missing_study(world: World) -> None:
    with client_of(world, "rad-patient") as client:
        for key in ("p2a", "p2b", "p3"):
            assert_hidden(client, world.studies[key])
        assert_readable(client, world.studies["p1a"])
        single = client.get(instance_path(world.studies["p1b"].first), headers={"Accept": AS_STORED})
        assert single.status_code == 200 and single.content[128:132] == b"DICM"


def test_an_in_scope_study_uid_does_not_open_another_studys_series_or_instances(world: World) -> None:
    """The study in the path is the one checked, so the series and instance must belong to it."""
    mine, other = world.studies["p1a"].uid, world.studies["p2a"].first
    base = f"/dicomweb/studies/{mine}/series/{other.SeriesInstanceUID}"
    with client_of(world, "rad-patient") as client:
        for path in (
            base,
            base + "/metadata",
            f"{base}/instances/{other.SOPInstanceUID}",
            f"{base}/instances/{other.SOPInstanceUID}/metadata",
            f"{base}/instances/{other.SOPInstanceUID}/frames/1",
            f"{base}/instances/{other.SOPInstanceUID}/rendered",
            f"{base}/instances/{other.SOPInstanceUID}/bulkdata/7FE00010",
        ):
            response = client.get(path)
            assert response.status_code == 404, (path, response.status_code)
            assert "Scope^" not in response.text
        assert client.get(base + "/instances").json() == []
        found = client.get("/dicomweb/instances", params={"SOPInstanceUID": other.SOPInstanceUID})
        assert found.json() == []


def test_dicomweb_client_with_a_users_bearer_token(world: World) -> None:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(world.server.home.ca)
    session.headers["Authorization"] = f"Bearer {world.tokens['rad-patient']}"
    client = DICOMwebClient(world.server.dicomweb, session=session)
    try:
        found = [item[STUDY_UID]["Value"][0] for item in client.search_for_studies()]
        assert found == [world.studies["p1a"].uid, world.studies["p1b"].uid]
        metadata = client.retrieve_study_metadata(world.studies["p1a"].uid)
        assert len(metadata) == 3
        p2a = world.studies["p2a"]
        with pytest.raises(requests.HTTPError) as refused:
            client.retrieve_study_metadata(p2a.uid)
        assert refused.value.response is not None and refused.value.response.status_code == 404
        assert client.search_for_series(p2a.uid) == []
    finally:
        session.close()


# -- study and department grants, referring physician -----------------------------------------------


def test_study_grant_opens_that_study_only(world: World) -> None:
    p2a = world.studies["p2a"]
    with client_of(world, "rad-study") as client:
        assert uids(client.get("/dicomweb/studies")) == [p2a.uid]
        assert uids(client.get("/dicomweb/instances")) == [p2a.uid]
        assert_readable(client, p2a)
        for key in ("p1a", "p2b"):  # the same patient's other study too
            assert_hidden(client, world.studies[key])


def test_department_grant_opens_that_departments_studies(world: World) -> None:
    """InstitutionalDepartmentName of the stored instances decides (CARDIOLOGY: p2a and p1a)."""
    p2a, p1a = world.studies["p2a"], world.studies["p1a"]
    with client_of(world, "rad-dept") as client:
        assert uids(client.get("/dicomweb/studies")) == [p2a.uid, p1a.uid]
        assert_readable(client, p1a)
        for key in ("p2b", "p1b", "p3"):
            assert_hidden(client, world.studies[key])


def test_referring_physician_sees_the_studies_naming_them(world: World) -> None:
    """`users referring ref-doe DOE^JOHN`: the studies whose ReferringPhysicianName is DOE^JOHN."""
    p1a, p2b = world.studies["p1a"], world.studies["p2b"]
    with client_of(world, "ref-doe") as client:
        assert uids(client.get("/dicomweb/studies")) == [p1a.uid, p2b.uid]
        assert set(uids(client.get("/dicomweb/series"))) == {p1a.uid, p2b.uid}
        assert_readable(client, p2b)
        for key in ("p2a", "p1b", "p3"):  # ROE^JANE's studies and one naming nobody
            assert_hidden(client, world.studies[key])
        # A search naming another referring physician finds nothing it may not see.
        assert client.get("/dicomweb/studies", params={"ReferringPhysicianName": "ROE^JANE"}).json() == []


# -- break-glass -----------------------------------------------------------------------------------


def test_break_glass_needs_the_permission(world: World) -> None:
    p3 = world.studies["p3"]
    for user in ("tech", "auditor"):
        with client_of(world, user) as client:
            response = client.post(
                "/api/breakglass", data={"study_uid": p3.uid, "reason": "emergency, patient in resus"}
            )
        assert response.status_code == 403, (user, response.text)
        assert "breakglass.use" in response.json()["error"]
    with client_of(world, "tech") as client:
        assert client.get(f"/dicomweb/studies/{p3.uid}/metadata").status_code == 404


def test_break_glass_needs_a_reason(world: World) -> None:
    p3 = world.studies["p3"]
    with client_of(world, "rad-bg") as client:
        for reason in ("", "urgent", "         x"):
            response = client.post("/api/breakglass", data={"study_uid": p3.uid, "reason": reason})
            assert response.status_code in (400, 403), (reason, response.text)
        assert client.get(f"/dicomweb/studies/{p3.uid}/metadata").status_code == 404


def test_break_glass_opens_one_study_and_auditors_see_why(world: World) -> None:
    p3, p1a = world.studies["p3"], world.studies["p1a"]
    reason = "stroke alert, patient unconscious in ED bay 4"
    with client_of(world, "rad-bg") as client:
        assert_hidden(client, p3)
        assert uids(client.get("/dicomweb/studies")) == []
        opened = client.post("/api/breakglass", data={"study_uid": p3.uid, "reason": reason})
        assert opened.status_code == 201, opened.text
        assert opened.json()["study_uid"] == p3.uid
        assert_readable(client, p3)
        assert uids(client.get("/dicomweb/studies")) == [p3.uid]
        assert_hidden(client, p1a)  # one study, not the whole archive
    with client_of(world, "auditor") as auditor:
        sessions = auditor.get("/api/breakglass")
    assert sessions.status_code == 200, sessions.text
    mine = [s for s in sessions.json() if s["study_uid"] == p3.uid]
    assert len(mine) == 1
    assert mine[0]["username"] == "rad-bg" and mine[0]["reason"] == reason
    with client_of(world, "rad-bg") as client:  # reviewing is not the radiologist's business
        assert client.get("/api/breakglass").status_code == 403


# -- privacy training ------------------------------------------------------------------------------


def test_expired_training_is_refused_with_the_reason_until_renewed(world: World) -> None:
    home = world.server.home
    p1a = world.studies["p1a"]
    metadata = f"/dicomweb/studies/{p1a.uid}/metadata"
    with client_of(world, "trainee") as client:
        assert client.get(metadata).status_code == 200
        home.cli("users", "training", "trainee", "2020-01-01")
        for path in ("/dicomweb/studies", metadata, instance_path(p1a.first)):
            refused = client.get(path)
            assert refused.status_code == 403, (path, refused.text)
            message = refused.json()["error"]
            assert "training" in message and "2020-01-01" in message, message
        home.cli("users", "training", "trainee", "2030-01-01")
        assert client.get(metadata).status_code == 200
        assert len(client.get("/dicomweb/studies").json()) == 5


def test_no_training_on_record_is_refused_with_the_reason(world: World) -> None:
    with client_of(world, "untrained") as client:
        refused = client.get("/dicomweb/studies")
    assert refused.status_code == 403
    assert "training" in refused.json()["error"]
