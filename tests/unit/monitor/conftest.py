"""A small, varied access log and directory for the monitor's unit tests (seeded, no I/O)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from medvault.monitor import Action, Directory, MonitorEvent, parse_directory

T0 = datetime(2026, 3, 2, tzinfo=UTC)
USERS = [
    ("ana", "referring_physician", "cardiology", "card-a", "day"),
    ("ben", "nurse", "cardiology", "card-b", "day"),
    ("cyd", "radiologist", "radiology", "rad-a", "night"),
    ("dev", "technologist", "radiology", "rad-a", "day"),
    ("eve", "researcher", "research", None, "day"),
    ("fay", "him", "him", None, "day"),
]


def pid(i: int) -> str:
    return f"{i:032x}"


def directory() -> Directory:
    return parse_directory(
        {
            "epoch": "2026-03-01T00:00:00Z",
            "departments": ["cardiology", "radiology", "research", "him"],
            "care_teams": {"cardiology": ["card-a", "card-b"], "radiology": ["rad-a"]},
            "shift_hours": {"day": [7, 19], "night": [19, 7]},
            "users": [
                {
                    "user": u,
                    "role": r,
                    "dept": d,
                    "team": t,
                    "shift": s,
                    "home_ip": "73.1.2.3" if u == "cyd" else None,
                    "remote": u == "cyd",
                    "irb_identified": False,
                    "extra": "ignored",
                }
                for u, r, d, t, s in USERS
            ],
            "patients": [
                {
                    "patient_id": pid(i),
                    "dept": "cardiology",
                    "team": "card-a" if i % 2 else "card-b",
                    "vip": i == 7,
                }
                for i in range(40)
            ],
        }
    )


def make_log(seed: int = 0, days: int = 5, per_day: int = 60) -> list[MonitorEvent]:
    """Ordinary work plus a few oddities (failed sign-ins, night access, a new address, exports,
    break-glass, a researcher on identified data), in time order."""
    rng = random.Random(seed)
    out: list[tuple[datetime, MonitorEvent]] = []
    n = 0
    actions = list(Action)
    for day in range(days):
        for _ in range(per_day):
            user, role, dept, _, shift = rng.choice(USERS)
            hour = rng.uniform(7, 19) if shift == "day" else rng.uniform(19, 30)
            if rng.random() < 0.05:
                hour = rng.uniform(0, 24)
            ts = T0 + timedelta(days=day, hours=hour, microseconds=rng.randrange(1000))
            action = rng.choice(actions) if rng.random() < 0.3 else rng.choice([Action.VIEW, Action.QUERY])
            n += 1
            out.append(
                (
                    ts,
                    MonitorEvent(
                        event_id=f"e{n}",
                        ts=ts,
                        user=user,
                        role=role,
                        dept=dept,
                        action=action,
                        patient_id=pid(rng.randrange(60)) if rng.random() < 0.8 else None,
                        study_uid=None,
                        bytes=rng.randrange(0, 10**7),
                        src_ip=rng.choice(["10.1.1.5", "10.1.1.6", "10.2.3.4", "8.8.8.8", "2001:db8:1:2::5"]),
                        user_agent=rng.choice(["Chrome/120.0", "Chrome/121.0", "curl/8.1", None]),
                        outcome="failure" if action is Action.LOGIN and rng.random() < 0.5 else "success",
                        break_glass=rng.random() < 0.01,
                    ),
                )
            )
    if days >= 5:  # a burst of failed sign-ins, and a session from a network never seen
        for k in range(7):
            ts = T0 + timedelta(days=3, hours=10, seconds=5 * k)
            n += 1
            out.append(
                (
                    ts,
                    MonitorEvent(
                        event_id=f"e{n}",
                        ts=ts,
                        user="ben",
                        action=Action.LOGIN,
                        outcome="failure",
                        src_ip="5.6.7.8",
                    ),
                )
            )
        for k in range(5):
            ts = T0 + timedelta(days=4, hours=11, minutes=k)
            n += 1
            out.append(
                (
                    ts,
                    MonitorEvent(
                        event_id=f"e{n}",
                        ts=ts,
                        user="ana",
                        action=Action.RETRIEVE,
                        patient_id=pid(30 + k),
                        src_ip="45.6.7.8",
                        user_agent="python/3",
                    ),
                )
            )
    out.sort(key=lambda x: x[0])
    return [e for _, e in out]
