"""The detector: causal (prefixes and any batch split give the same scores), restartable from a
snapshot without double counting, explainable, and taught by dispositions."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medvault.errors import EventOutOfOrder, MonitorStateInvalid
from medvault.monitor import (
    Action,
    Directory,
    Disposition,
    EventBatch,
    Feedback,
    MonitorEvent,
    OnlineMonitor,
    Rules,
    ScoredEvent,
    apply_disposition,
    replay,
)

from .conftest import T0, directory, make_log, pid

LOG = make_log(seed=11, days=6, per_day=40)
DIRECTORY = directory()


def _key(s: ScoredEvent) -> tuple[object, ...]:
    return (
        s.event_id,
        s.score,
        s.alert,
        s.severity,
        s.incident_id,
        s.reasons,
        dict(s.points),
        dict(s.features),
    )


def _run(
    events: list[MonitorEvent], sizes: list[int], d: Directory | None = DIRECTORY
) -> list[tuple[object, ...]]:
    m = OnlineMonitor(directory=d)
    out: list[tuple[object, ...]] = []
    i = k = 0
    while i < len(events):
        n = sizes[k % len(sizes)] if sizes else len(events)
        out.extend(_key(s) for s in m.observe_batch(EventBatch.of(events[i : i + n])))
        i, k = i + n, k + 1
    return out


FULL = _run(LOG, [])


def test_the_log_exercises_the_rules() -> None:
    fired = {rule for s in FULL for rule in s[6]}  # type: ignore[attr-defined]
    assert {"failed_login_user", "new_network", "unexplained_access", "break_glass", "vip"} <= fired
    assert any(s[2] for s in FULL)  # some alerts


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 120), min_size=1, max_size=6))
def test_any_batch_split_gives_the_same_scores(sizes: list[int]) -> None:
    assert _run(LOG, sizes) == FULL


@settings(max_examples=10, deadline=None)
@given(cut=st.integers(0, len(LOG)))
def test_a_prefix_replay_gives_the_full_replays_scores(cut: int) -> None:
    prefix = [_key(s) for s in replay(LOG[:cut], DIRECTORY, batch_size=97)]
    assert prefix == FULL[:cut]


def test_one_event_at_a_time_equals_batches() -> None:
    m = OnlineMonitor(directory=DIRECTORY)
    assert [_key(m.observe(e)) for e in LOG[:300]] == FULL[:300]


@settings(max_examples=8, deadline=None)
@given(cut=st.integers(0, len(LOG)), size=st.integers(1, 200))
def test_snapshot_and_resume_equals_an_uninterrupted_run(cut: int, size: int) -> None:
    m = OnlineMonitor(directory=DIRECTORY)
    first = [_key(s) for s in replay(LOG[:cut], monitor=m, batch_size=size)]
    state = json.loads(json.dumps(m.snapshot()))
    resumed = OnlineMonitor.restore(state, directory=DIRECTORY)
    rest = [_key(s) for s in replay(LOG[cut:], monitor=resumed, batch_size=size)]
    assert first + rest == FULL
    # and the state after the whole log is the same as the uninterrupted one's
    whole = OnlineMonitor(directory=DIRECTORY)
    list(replay(LOG, monitor=whole))
    assert json.dumps(resumed.snapshot(), sort_keys=True) == json.dumps(whole.snapshot(), sort_keys=True)


def test_restore_refuses_garbage() -> None:
    with pytest.raises(MonitorStateInvalid):
        OnlineMonitor.restore({"version": 99})
    state = OnlineMonitor().snapshot()
    del state["ui"]
    with pytest.raises(MonitorStateInvalid):
        OnlineMonitor.restore(state)


def test_out_of_order_is_refused_and_state_kept() -> None:
    m = OnlineMonitor()
    m.observe(LOG[10])
    with pytest.raises(EventOutOfOrder):
        m.observe(LOG[0])
    with pytest.raises(EventOutOfOrder, match="event 2"):
        m.observe_batch(EventBatch.of([LOG[20], LOG[15]]))


def test_works_without_a_directory() -> None:
    scored = list(replay(LOG))
    assert len(scored) == len(LOG) and all(np.isfinite(s.score) for s in scored)
    assert _run(LOG, [33], d=None) == [_key(s) for s in scored]


# -- rules, each on a tiny story ---------------------------------------------------------------


def ev(n: int, minutes: float, user: str = "ana", action: Action = Action.VIEW, **kw: Any) -> MonitorEvent:
    base: dict[str, Any] = {
        "role": "referring_physician",
        "dept": "cardiology",
        "src_ip": "10.1.1.5",
        "user_agent": "Chrome/120.0",
    }
    base.update(kw)
    return MonitorEvent(
        event_id=f"x{n}", ts=T0 + timedelta(minutes=minutes), user=user, action=action, **base
    )


def history(days: int = 5) -> list[MonitorEvent]:
    """ana's ordinary days: her own team's patients, from her workstation, 09-16h."""
    out = []
    for d in range(days):
        for k in range(12):
            out.append(ev(d * 100 + k, d * 1440 + 9 * 60 + 30 * k, patient_id=pid(1 + 2 * (k % 5))))
    return out


def last(
    events: list[MonitorEvent], d: Directory | None = DIRECTORY, rules: Rules | None = None
) -> ScoredEvent:
    return list(replay(events, d, rules=rules))[-1]


def test_care_team_explains_and_outsider_patient_does_not() -> None:
    h = history()
    ok = last([*h, ev(999, 5 * 1440 + 600, patient_id=pid(3))])
    assert ok.score == 0 and not ok.alert
    odd = last([*h, ev(999, 5 * 1440 + 600, patient_id=pid(50))])  # not in the directory, no relation
    assert odd.points.get("unexplained_access", 0) > 0
    assert any("no care relation" in r for r in odd.reasons)
    assert odd.features["care_relation"] == 0


def test_a_study_sent_to_the_department_explains_access() -> None:
    h = history()
    sent = ev(998, 5 * 1440 + 500, user="dev", action=Action.STORE, role="technologist", patient_id=pid(50))
    scored = last([*h, sent, ev(999, 5 * 1440 + 600, patient_id=pid(50))])
    assert "unexplained_access" not in scored.points


def test_vip_outside_care_relation_alerts() -> None:
    h = [e for e in history() if e.patient_id != pid(7)]
    scored = last([*h, ev(999, 5 * 1440 + 600, user="ben", role="nurse", patient_id=pid(7))])  # card-a's VIP
    # ben is card-b; patient 7 belongs to card-a, same department: a weak relation, VIP flagged
    assert scored.points.get("vip", 0) > 0 and "VIP patient" in scored.reasons


def test_failed_login_burst_per_user_and_per_address() -> None:
    fails = [
        ev(i, 600 + i * 0.1, action=Action.LOGIN, outcome="failure", src_ip="10.1.1.5") for i in range(8)
    ]
    scores = [s.score for s in replay(fails, DIRECTORY)]
    assert scores[:3] == [0, 0, 0] and scores[-1] >= Rules().alert_score  # typos first, a burst after
    spray = [
        ev(i, 600 + i * 0.1, user=f"user{i}", action=Action.LOGIN, outcome="failure", src_ip="5.6.7.8")
        for i in range(12)
    ]
    out = list(replay(spray))
    assert out[-1].points.get("failed_login_address", 0) > 0 and "failed_login_user" not in out[-1].points


def test_failed_logins_expire_with_the_window() -> None:
    r = Rules()
    fails = [ev(i, i * 11, action=Action.LOGIN, outcome="failure") for i in range(8)]  # one every 11 min
    assert all(s.score == 0 for s in replay(fails, rules=r))


def test_researcher_on_identified_data_unless_approved() -> None:
    e = ev(1, 600, user="eve", role="researcher", dept="research", patient_id=pid(3))
    assert last([e]).points["researcher_identified"] == Rules().researcher_identified_points
    approved = replace(
        DIRECTORY, users={**DIRECTORY.users, "eve": replace(DIRECTORY.users["eve"], irb_identified=True)}
    )
    assert "researcher_identified" not in last([e], approved).points
    deid = ev(2, 601, user="eve", role="researcher", action=Action.RETRIEVE_DEID)
    assert "researcher_identified" not in last([deid]).points


def test_break_glass_and_outside_shift() -> None:
    glass = last([*history(), ev(999, 5 * 1440 + 600, patient_id=pid(3), break_glass=True)])
    assert glass.points["break_glass"] > 0 and "break-glass access" in glass.reasons
    night = last([*history(), ev(999, 5 * 1440 + 180, patient_id=pid(3))])  # 03:00, a day-shift user
    assert night.points["outside_shift"] > 0 and night.points["unusual_hour"] > 0


def test_new_network_and_device_after_the_user_has_history() -> None:
    h = history()
    scored = last([*h, ev(999, 5 * 1440 + 600, patient_id=pid(3), src_ip="45.1.2.3", user_agent="curl/8.1")])
    assert scored.points["new_network"] == Rules().new_network_points
    assert scored.points["new_device"] == Rules().new_device_points
    upgrade = last([*h, ev(999, 5 * 1440 + 600, patient_id=pid(3), user_agent="Chrome/121.0")])
    assert "new_device" not in upgrade.points  # a browser upgrade is not a new device
    fresh_user = last([ev(1, 600, user="zed", src_ip="45.1.2.3")])
    assert "new_network" not in fresh_user.points  # no history yet: everything is new


def test_volume_against_the_users_norm() -> None:
    h = history()
    spree = [ev(1000 + k, 5 * 1440 + 600 + k, action=Action.EXPORT, patient_id=pid(3)) for k in range(40)]
    scored = list(replay([*h, *spree], DIRECTORY))
    assert scored[-1].points["volume_out"] > 0 and scored[-1].alert
    assert scored[-1].incident_id == scored[-5].incident_id is not None  # one incident
    assert scored[-1].incident is not None and scored[-1].incident.alerts > 1
    assert scored[len(h)].points.get("volume_out", 0) == 0  # the first export is ordinary


def test_alerts_of_one_user_far_apart_are_separate_incidents() -> None:
    fails = [ev(i, i * 0.1, action=Action.LOGIN, outcome="failure") for i in range(6)]
    later = [ev(100 + i, 3 * 1440 + i * 0.1, action=Action.LOGIN, outcome="failure") for i in range(6)]
    out = list(replay([*fails, *later]))
    assert out[5].incident_id and out[-1].incident_id and out[5].incident_id != out[-1].incident_id


# -- feedback ----------------------------------------------------------------------------------


def test_false_positive_lowers_the_repeat_and_true_positive_restores() -> None:
    r = Rules()
    fired = {"vip": 4.0, "outside_shift": 1.5}
    fb = apply_disposition(Feedback(), r, user="ana", fired=fired, disposition=Disposition.FALSE_POSITIVE)
    assert fb.user_rule[("ana", "vip")] == r.fp_user_factor
    assert fb.site_rule["vip"] == r.fp_site_factor
    assert Feedback().user_rule == {}  # pure: the input is untouched
    back = apply_disposition(fb, r, user="ana", fired=fired, disposition=Disposition.TRUE_POSITIVE)
    assert back.factor("ana", next(iter(__import__("medvault.monitor", fromlist=["Rule"]).Rule))) == 1.0
    assert ("ana", "vip") not in back.user_rule
    many = fb
    for _ in range(20):
        many = apply_disposition(many, r, user="ana", fired=fired, disposition=Disposition.FALSE_POSITIVE)
    assert min(many.user_rule.values()) == r.min_factor


def test_a_resolved_false_pattern_alerts_less_next_time() -> None:
    spree = [ev(1000 + k, 5 * 1440 + 600 + k, action=Action.EXPORT, patient_id=pid(3)) for k in range(40)]
    log = [*history(), *spree]
    first = list(replay(log, DIRECTORY))
    assert not any(s.alert for s in first[: len(history())])  # ordinary days, cold start included
    alert = next(s for s in first if s.alert)
    m = OnlineMonitor(directory=DIRECTORY)
    list(replay(log[: len(history())], monitor=m))
    m.resolve(user="ana", fired=alert.points, disposition=Disposition.FALSE_POSITIVE)
    second = list(replay(spree, monitor=m))
    assert sum(s.alert for s in second) < sum(s.alert for s in first)
    assert max(s.score for s in second) < max(s.score for s in first)
    # the feedback is part of the state: a restored monitor keeps it
    again = OnlineMonitor.restore(json.loads(json.dumps(m.snapshot())), directory=DIRECTORY)
    assert again.feedback == m.feedback


def test_benign_explained_marks_the_pair_explained() -> None:
    m = OnlineMonitor(directory=DIRECTORY)
    h = history()
    list(replay(h, monitor=m))
    odd = m.observe(ev(999, 5 * 1440 + 600, patient_id=pid(50)))
    assert "unexplained_access" in odd.points
    m.resolve(user="ana", fired=odd.points, disposition=Disposition.BENIGN_EXPLAINED, patient_id=pid(50))
    again = m.observe(ev(1000, 5 * 1440 + 700, patient_id=pid(50)))
    assert "unexplained_access" not in again.points


def test_rules_from_json_round_trip_and_refusals() -> None:
    r = Rules(alert_score=7.0, researcher_roles=("researcher", "data_scientist"))
    assert Rules.from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(MonitorStateInvalid, match="unknown"):
        Rules.from_json({"alert_scor": 1})
    with pytest.raises(MonitorStateInvalid):
        Rules(alert_score=-1)
    with pytest.raises(MonitorStateInvalid):
        Rules(alert_score=20, high_score=10)


def test_late_events_can_be_clamped_for_the_online_worker() -> None:
    m = OnlineMonitor(late="clamp")
    m.observe(LOG[10])
    scored = m.observe(LOG[0])  # a worker's clock behind: scored at the later time, not refused
    assert scored.event_id == LOG[0].event_id
    again = OnlineMonitor.restore(json.loads(json.dumps(m.snapshot())))
    assert again.late == "clamp"
    with pytest.raises(MonitorStateInvalid):
        OnlineMonitor(late="drop")
