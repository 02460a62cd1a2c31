"""The policy decision point: role x action matrix, scopes, break-glass, training gate, audit."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medvault.access import policy
from medvault.access.policy import (
    OBLIGATION_BREAK_GLASS,
    OBLIGATION_DEIDENTIFY,
    ROLE_PERMISSIONS,
    Action,
    BreakGlassGrant,
    Context,
    Decision,
    DecisionPoint,
    Grant,
    MemoryAuditSink,
    Principal,
    Resource,
    decide,
    enforce,
    load_roles,
)
from medvault.errors import ConfigError, Forbidden, NotFound

NOW = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)
CTX = Context(now=NOW)
STUDY = Resource(study_uid="1.2.3", patient="p" * 32, departments=frozenset({"cardio"}))
A = Action

# The documented matrix: every (role, action) pair is listed; anything not here is denied.
EXPECTED: dict[str, set[Action]] = {
    "admin": {
        A.USERS_MANAGE,
        A.NODES_MANAGE,
        A.KEYS_MANAGE,
        A.CONFIG_MANAGE,
        A.RETENTION_MANAGE,
        A.TRAINING_READ,
        A.TRAINING_MANAGE,
    },
    "radiologist": {A.STUDY_READ, A.STUDY_STORE, A.BREAKGLASS_USE},
    "technologist": {A.STUDY_READ, A.STUDY_STORE},
    "referring_physician": {A.STUDY_READ, A.BREAKGLASS_USE},
    "researcher": {A.DEID_READ, A.DEID_EXPORT},
    "auditor": {
        A.LEDGER_READ,
        A.ALERTS_READ,
        A.ALERTS_MANAGE,
        A.BREAKGLASS_REVIEW,
        A.LEGALHOLD_MANAGE,
        A.PATIENT_RIGHTS,
        A.TRAINING_READ,
    },
    "service": {A.STUDY_STORE},
    "archivist": {
        A.STUDY_READ,
        A.STUDY_STORE,
        A.STUDY_DELETE,
        A.RETENTION_MANAGE,
        A.LEGALHOLD_MANAGE,
        A.PATIENT_RIGHTS,
    },
    "viewer": {A.STUDY_READ},
    "monitoring": {A.METRICS_READ},
}


def human(*roles: str, **kw: Any) -> Principal:
    return Principal(
        name="u", method="token", roles=frozenset(roles), human=True, training_expires=date(2031, 1, 1), **kw
    )


@pytest.mark.parametrize("role", sorted(EXPECTED))
@pytest.mark.parametrize("action", list(Action))
def test_role_action_matrix(role: str, action: Action) -> None:
    subject = human(role, grants=(Grant.site(),))
    ctx = Context(now=NOW, reason="patient unconscious in ER")
    resource = Resource(study_uid="1.2.3", deidentified=True) if action is Action.DEID_READ else STUDY
    decision = decide(subject, action, resource, ctx)
    assert decision.allowed == (action in EXPECTED[role]), decision
    assert ROLE_PERMISSIONS[role] == frozenset(EXPECTED[role])


def test_admin_and_auditor_never_see_images() -> None:
    for role in ("admin", "auditor"):
        d = decide(human(role, grants=(Grant.site(),)), Action.STUDY_READ, STUDY, CTX)
        assert not d.allowed and not d.conceal


def test_api_key_principal_still_works_two_argument_call() -> None:
    viewer = Principal(name="ohif", role="viewer", method="api-key")
    assert viewer.roles == {"viewer"}
    assert decide(viewer, Action.STUDY_READ).allowed
    assert not decide(viewer, Action.STUDY_STORE).allowed
    assert decide(None, Action.STUDY_READ) == Decision(False, "not authenticated")
    unknown = decide(Principal(name="x", role="superuser"), Action.STUDY_READ)
    assert not unknown.allowed and "no known role" in unknown.reason


def test_machines_skip_training_gate_but_not_scope() -> None:
    key = Principal(name="k", role="viewer")
    assert not decide(key, Action.STUDY_READ, STUDY, CTX).allowed
    assert decide(
        Principal(name="k", role="viewer", grants=(Grant.site(),)), Action.STUDY_READ, STUDY, CTX
    ).allowed


# -- scope -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "allowed"),
    [
        (Grant(kind="study", value="1.2.3"), True),
        (Grant(kind="study", value="1.2.4"), False),
        (Grant(kind="patient", value="p" * 32), True),
        (Grant(kind="patient", value="q" * 32), False),
        (Grant(kind="department", value="cardio"), True),
        (Grant(kind="department", value="neuro"), False),
        (Grant(kind="site", value="*"), True),
        (Grant(kind="study", value="1.2.3", expires_at=NOW), False),  # expired at this instant
        (Grant(kind="study", value="1.2.3", expires_at=NOW + timedelta(seconds=1)), True),
    ],
)
def test_scope_by_grant(grant: Grant, allowed: bool) -> None:
    decision = decide(human("radiologist", grants=(grant,)), Action.STUDY_READ, STUDY, CTX)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.conceal, "out of scope must look like a missing study"


def test_out_of_scope_reason_tells_nothing_and_enforce_answers_404() -> None:
    decision = decide(human("radiologist"), Action.STUDY_READ, STUDY, CTX)
    assert decision.conceal and "1.2.3" not in decision.reason
    with pytest.raises(NotFound) as info:
        enforce(decision)
    assert str(info.value) == "no such study"
    with pytest.raises(Forbidden):
        enforce(decide(human("auditor"), Action.STUDY_READ, STUDY, CTX))
    assert enforce(decide(human("auditor"), Action.LEDGER_READ, None, CTX)).allowed


def test_referring_physician_sees_studies_naming_them() -> None:
    doc = human("referring_physician", referring_id="dr-house")
    naming = Resource(study_uid="9.9", referring=frozenset({"dr-house", "dr-wilson"}))
    other = Resource(study_uid="9.8", referring=frozenset({"dr-wilson"}))
    assert decide(doc, Action.STUDY_READ, naming, CTX).allowed
    assert decide(doc, Action.STUDY_READ, other, CTX).conceal
    granted = human(
        "referring_physician", referring_id="dr-house", grants=(Grant(kind="study", value="9.8"),)
    )
    assert decide(granted, Action.STUDY_READ, other, CTX).allowed


def test_capability_check_without_resource() -> None:
    assert decide(human("radiologist"), Action.STUDY_READ, None, CTX).allowed


# -- de-identified only ------------------------------------------------------------------------------


def test_researcher_never_gets_phi() -> None:
    r = human("researcher", grants=(Grant.site(),))
    assert not decide(r, Action.STUDY_READ, STUDY, CTX).allowed
    assert not decide(r, Action.DEID_READ, STUDY, CTX).allowed
    assert decide(r, Action.DEID_READ, Resource(study_uid="1.2.3", deidentified=True), CTX).allowed
    export = decide(r, Action.DEID_EXPORT, STUDY, CTX)
    assert export.allowed and OBLIGATION_DEIDENTIFY in export.obligations
    assert decide(human("researcher"), Action.DEID_EXPORT, STUDY, CTX).conceal  # scoped too


# -- break-glass -------------------------------------------------------------------------------------


def test_break_glass_open_needs_permission_and_reason() -> None:
    rad = human("radiologist")
    ok = decide(rad, Action.BREAKGLASS_USE, STUDY, Context(now=NOW, reason="stroke alert, on call"))
    assert ok.allowed and ok.obligations == (OBLIGATION_BREAK_GLASS,)
    assert not decide(rad, Action.BREAKGLASS_USE, STUDY, Context(now=NOW, reason="  because ")).allowed
    assert not decide(
        rad, Action.BREAKGLASS_USE, None, Context(now=NOW, reason="stroke alert, on call")
    ).allowed
    tech = human("technologist")
    assert not decide(
        tech, Action.BREAKGLASS_USE, STUDY, Context(now=NOW, reason="stroke alert, on call")
    ).allowed


def test_break_glass_session_opens_one_study_for_a_time() -> None:
    session = BreakGlassGrant(study_uid="1.2.3", expires_at=NOW + timedelta(hours=4))
    rad = human("radiologist", break_glass=(session,))
    d = decide(rad, Action.STUDY_READ, STUDY, CTX)
    assert d.allowed and OBLIGATION_BREAK_GLASS in d.obligations
    assert decide(rad, Action.STUDY_READ, Resource(study_uid="1.2.4"), CTX).conceal
    later = Context(now=NOW + timedelta(hours=4))
    assert decide(rad, Action.STUDY_READ, STUDY, later).conceal
    # a regular grant wins: no break-glass obligation when in scope anyway
    both = human("radiologist", break_glass=(session,), grants=(Grant(kind="study", value="1.2.3"),))
    assert decide(both, Action.STUDY_READ, STUDY, CTX).obligations == ()


# -- training gate -----------------------------------------------------------------------------------


def test_training_gate() -> None:
    expired = Principal(
        name="u",
        method="token",
        roles=frozenset({"radiologist"}),
        human=True,
        training_expires=date(2030, 3, 3),
        grants=(Grant.site(),),
    )
    d = decide(expired, Action.STUDY_READ, STUDY, CTX)
    assert not d.allowed and not d.conceal
    assert "training expired on 2030-03-03" in d.reason and "administrator" in d.reason
    same_day = Principal(
        name="u",
        method="token",
        roles=frozenset({"radiologist"}),
        human=True,
        training_expires=date(2030, 3, 4),
        grants=(Grant.site(),),
    )
    assert decide(same_day, Action.STUDY_READ, STUDY, CTX).allowed  # valid through its last day
    never = Principal(name="u", method="token", roles=frozenset({"radiologist"}), human=True)
    assert "no privacy training" in decide(never, Action.STUDY_READ, None, CTX).reason
    auditor = Principal(name="a", roles=frozenset({"auditor"}), human=True)
    assert decide(auditor, Action.LEDGER_READ, None, CTX).allowed  # no PHI: no gate


def test_must_change_password_blocks_everything() -> None:
    d = decide(
        human("radiologist", must_change_password=True, grants=(Grant.site(),)), Action.STUDY_READ, STUDY, CTX
    )
    assert not d.allowed and "password" in d.reason


# -- configuration -----------------------------------------------------------------------------------


def test_roles_overridable_from_config() -> None:
    table = load_roles({"admin": ["users.manage", "study.read"], "nurse": ["study.read"]})
    assert decide(human("admin", grants=(Grant.site(),)), Action.STUDY_READ, STUDY, CTX, roles=table).allowed
    assert decide(human("nurse", grants=(Grant.site(),)), Action.STUDY_READ, STUDY, CTX, roles=table).allowed
    assert table["radiologist"] == ROLE_PERMISSIONS["radiologist"]
    only = load_roles({"nurse": ["study.read"]}, replace=True)
    assert set(only) == {"nurse"}
    with pytest.raises(ConfigError, match="unknown permission"):
        load_roles({"x": ["study.readz"]})
    with pytest.raises(ConfigError):
        load_roles({"x": "study.read"})


def test_decision_point_audits_allow_and_deny() -> None:
    sink = MemoryAuditSink()
    pdp = DecisionPoint(sink=sink)
    pdp.decide(
        human("radiologist", grants=(Grant.site(),)),
        Action.STUDY_READ,
        STUDY,
        Context(now=NOW, client="10.0.0.9"),
    )
    pdp.decide(human("auditor"), Action.STUDY_READ, STUDY, CTX)
    pdp.decide(None, Action.LEDGER_READ)
    assert [e.allowed for e in sink.events] == [True, False, False]
    first = sink.events[0]
    assert (first.subject, first.action, first.study_uid, first.patient, first.client) == (
        "u",
        "study.read",
        "1.2.3",
        "p" * 32,
        "10.0.0.9",
    )
    assert sink.events[2].subject is None


def test_public_names() -> None:
    import medvault.access as access

    assert {"Action", "Decision", "Principal", "decide", "ROLES", "ROLE_PERMISSIONS"} <= set(access.__all__)
    assert set(policy.__all__) <= set(dir(policy))


# -- properties --------------------------------------------------------------------------------------

roles_st = st.frozensets(st.sampled_from([*ROLE_PERMISSIONS, "ghost"]), max_size=4)
grant_st = st.builds(
    Grant,
    kind=st.sampled_from(["patient", "study", "department", "site"]),
    value=st.sampled_from(["1.2.3", "p" * 32, "cardio", "neuro", "*"]),
    expires_at=st.none() | st.sampled_from([NOW - timedelta(1), NOW + timedelta(1)]),
)
principal_st = st.builds(
    Principal,
    name=st.just("u"),
    method=st.sampled_from(["token", "api-key", "oidc"]),
    roles=roles_st,
    grants=st.tuples(*[grant_st] * 2) | st.just(()),
    human=st.booleans(),
    training_expires=st.none() | st.dates(date(2029, 1, 1), date(2031, 1, 1)),
    referring_id=st.none() | st.just("dr-a"),
    must_change_password=st.booleans(),
)
resource_st = st.none() | st.builds(
    Resource,
    study_uid=st.sampled_from(["1.2.3", "1.2.4"]),
    patient=st.none() | st.just("p" * 32),
    departments=st.frozensets(st.sampled_from(["cardio", "neuro"])),
    referring=st.frozensets(st.sampled_from(["dr-a", "dr-b"])),
    deidentified=st.booleans(),
)


@given(principal_st, st.sampled_from(list(Action)), resource_st, st.text(max_size=20))
def test_properties(subject: Principal, action: Action, resource: Resource | None, reason: str) -> None:
    ctx = Context(now=NOW, reason=reason)
    d = decide(subject, action, resource, ctx)
    assert d == decide(subject, action, resource, ctx)  # pure
    if d.allowed:
        assert any(action in ROLE_PERMISSIONS.get(r, frozenset()) for r in subject.roles)
        assert not subject.must_change_password
        if subject.human and action in policy.PHI_ACTIONS:
            # current training, or break-glass (opening a session, or reading through one)
            assert (
                (subject.training_expires is not None and subject.training_expires >= NOW.date())
                or action is Action.BREAKGLASS_USE
                or OBLIGATION_BREAK_GLASS in d.obligations
                or (resource is None and any(NOW < s.expires_at for s in subject.break_glass))
            )
        if action is Action.STUDY_READ:
            assert subject.roles & {
                "radiologist",
                "technologist",
                "referring_physician",
                "archivist",
                "viewer",
                "node.find",  # DICOM nodes registered for C-FIND / C-GET / C-MOVE
                "node.get",
                "node.move",
            }
        if action is Action.DEID_READ and resource is not None:
            assert resource.deidentified
    else:
        assert d.obligations == ()
    if d.conceal:
        assert not d.allowed and resource is not None


@given(principal_st, st.sampled_from(list(Action)), resource_st)
def test_adding_a_role_never_removes_a_permit_without_scope_change(
    subject: Principal, action: Action, resource: Resource | None
) -> None:
    before = decide(subject, action, resource, Context(now=NOW, reason="reason long enough"))
    wider = Principal(**{**subject.__dict__, "roles": subject.roles | {"viewer"}})
    after = decide(wider, action, resource, Context(now=NOW, reason="reason long enough"))
    if before.allowed:
        assert after.allowed


# -- training records (issue #15) --------------------------------------------------------------------


def test_lapsed_training_leaves_break_glass_open() -> None:
    """Break-glass aside: a lapsed person may still open a study in an emergency and read it
    through the session (audited as break-glass, the reason says training lapsed); nothing else."""
    session = BreakGlassGrant(study_uid="1.2.3", expires_at=NOW + timedelta(hours=4))
    lapsed = Principal(
        name="u",
        method="token",
        roles=frozenset({"radiologist"}),
        human=True,
        training_expires=date(2030, 3, 3),
        training_course="privacy 101",
        grants=(Grant.site(),),
    )
    refused = decide(lapsed, Action.STUDY_READ, STUDY, CTX)
    assert (
        not refused.allowed and "expired on 2030-03-03" in refused.reason and "privacy 101" in refused.reason
    )
    opened = decide(lapsed, Action.BREAKGLASS_USE, STUDY, Context(now=NOW, reason="stroke alert, on call"))
    assert opened.allowed and opened.obligations == (OBLIGATION_BREAK_GLASS,)
    assert "training lapsed" in opened.reason
    assert decide(lapsed, Action.BREAKGLASS_USE, None, CTX).allowed  # the route's capability gate
    with_session = Principal(**{**lapsed.__dict__, "break_glass": (session,)})
    read = decide(with_session, Action.STUDY_READ, STUDY, CTX)
    assert read.allowed and read.obligations == (OBLIGATION_BREAK_GLASS,)
    assert not decide(with_session, Action.STUDY_READ, Resource(study_uid="1.2.4"), CTX).allowed
    capability = decide(with_session, Action.STUDY_READ, None, CTX)  # the route gate; then per study
    assert capability.allowed and "break-glass only" in capability.reason
    assert not decide(lapsed, Action.STUDY_READ, None, CTX).allowed  # without a session: nothing
    assert not decide(with_session, Action.STUDY_STORE, STUDY, CTX).allowed


def test_missing_required_course_is_named() -> None:
    missing = Principal(
        name="u", method="token", roles=frozenset({"radiologist"}), human=True, training_course="gdpr"
    )
    d = decide(missing, Action.STUDY_READ, None, CTX)
    assert not d.allowed and "training" in d.reason and "'gdpr'" in d.reason
