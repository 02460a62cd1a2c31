"""A synthetic hospital access log with labelled insider scenarios, for the monitor's benchmarks.

    python bench/monitor_generate.py OUTDIR [--seed N] [--days 28] [--users 160] [--subtle]

writes OUTDIR/EVENTS.jsonl (issue #13's format, time order), OUTDIR/DIRECTORY.json and
OUTDIR/LABELS.jsonl (one line per event that is part of a scenario or of named legitimate noise:
``{"event_id", "label": 0|1, "scenario", "incident", "noise"}``; every other event is label 0).
The detector never reads LABELS.jsonl.

The site: clinical departments with care teams and a census of patients that turns over, orders
that become studies stored by radiology technologists and read by radiologists, day and night
shifts, one workstation subnet per department. Legitimate noise (tagged, label 0): consults
(most preceded by a study routed to the consulting department, some not), covering colleagues,
hand-offs between teams, overtime, on-call sessions from home at night, shared workstations,
password typos, a browser upgrade rolling across the site, release-of-information batches by
health-information clerks, de-identified bulk research pulls, IRB-approved researchers on
identified data. Insider scenarios (label 1), each instance one incident, injected after a
warm-up week: VIP snooping, snooping outside the care relation, bulk export, off-hours use, a
stolen credential from a new network and device, failed-sign-in bursts and sprays, researcher
privilege misuse, low-and-slow exfiltration over weeks. ``--subtle`` makes every scenario smaller
and closer to normal work (fewer events, site user agents, in-shift hours where possible).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

EPOCH = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
CLINICAL = ["emergency", "cardiology", "oncology", "orthopedics", "neurology", "pediatrics", "icu", "surgery"]
UA_OLD = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "OHIF-Viewer/3.7.0 (Windows NT 10.0)",
]
UA_NEW = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.95 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "OHIF-Viewer/3.8.1 (Windows NT 10.0)",
]
UA_HOME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.3 Safari/605.1.15"
)
UA_ATTACK = [
    "python-requests/2.31.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0",
]
SCENARIOS = (
    "vip_snooping",
    "snooping",
    "bulk_export",
    "off_hours",
    "stolen_credential",
    "failed_login_burst",
    "researcher_misuse",
    "low_and_slow",
)


@dataclass
class User:
    name: str
    role: str
    dept: str
    team: str | None
    shift: str
    ws_ip: str
    home_ip: str | None = None
    remote: bool = False
    irb: bool = False
    oncall: bool = False
    ua: int = 0


@dataclass
class Site:
    rng: random.Random
    users: list[User] = field(default_factory=list)
    patients: list[dict[str, object]] = field(default_factory=list)
    teams: dict[str, list[str]] = field(default_factory=dict)
    census: dict[str, list[int]] = field(default_factory=dict)  # team -> patient indexes
    by_team: dict[str, list[int]] = field(default_factory=dict)
    events: list[tuple[int, int, dict[str, object]]] = field(default_factory=list)
    labels: dict[int, dict[str, object]] = field(default_factory=dict)
    seq: int = 0
    upgrade_day: int = 12


def _pseudonym(seed: int, i: int) -> str:
    return hashlib.sha256(f"patient/{seed}/{i}".encode()).hexdigest()[:32]


def build_site(rng: random.Random, n_users: int, seed: int) -> Site:
    site = Site(rng=rng)
    depts = [*CLINICAL, "radiology"]
    for d in depts:
        site.teams[d] = [f"{d}-{c}" for c in "abc"[: (2 if d in ("icu", "radiology") else 3)]]
    mix = [
        ("radiologist", 0.11),
        ("technologist", 0.11),
        ("referring_physician", 0.34),
        ("nurse", 0.27),
        ("him", 0.04),
        ("researcher", 0.06),
        ("admin", 0.03),
        ("auditor", 0.02),
    ]
    counts = {r: max(1, round(n_users * w)) for r, w in mix}
    counts["nurse"] += n_users - sum(counts.values())
    k = 0
    for role, c in counts.items():
        for j in range(c):
            if role in ("radiologist", "technologist"):
                dept = "radiology"
            elif role in ("referring_physician", "nurse"):
                dept = CLINICAL[j % len(CLINICAL)]
            else:
                dept = {"him": "him", "researcher": "research", "admin": "it", "auditor": "compliance"}[role]
            team = rng.choice(site.teams[dept]) if dept in site.teams else None
            night = dept in ("emergency", "icu", "radiology") and rng.random() < 0.3
            subnet = depts.index(dept) + 1 if dept in depts else 20 + len(dept) % 7
            u = User(
                name=f"u{k:03d}",
                role=role,
                dept=dept,
                team=team,
                shift="night" if night else "day",
                ws_ip=f"10.{subnet}.{rng.randrange(1, 4)}.{rng.randrange(10, 250)}",
                irb=role == "researcher" and j % 3 == 0,
                oncall=role in ("referring_physician", "radiologist") and rng.random() < 0.3,
                ua=rng.choice([0, 0, 0, 1, 2]) if role != "technologist" else 2,
            )
            if u.oncall or (role == "radiologist" and rng.random() < 0.3):
                u.home_ip = f"73.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(2, 250)}"
                u.remote = role == "radiologist"
            site.users.append(u)
            k += 1
    n_pat = 25 * n_users
    for i in range(n_pat):
        dept = rng.choice(CLINICAL)
        team = rng.choice(site.teams[dept])
        site.patients.append(
            {"patient_id": _pseudonym(seed, i), "dept": dept, "team": team, "vip": rng.random() < 0.01}
        )
        site.by_team.setdefault(team, []).append(i)
    for d in CLINICAL:
        for t in site.teams[d]:
            site.census[t] = rng.sample(site.by_team[t], min(18, len(site.by_team[t])))
    return site


def emit(
    site: Site,
    t: datetime,
    u: User,
    action: str,
    *,
    pat: int | None = None,
    ok: bool = True,
    ip: str | None = None,
    ua: str | None = None,
    size: int = 0,
    day: int = 0,
    label: dict[str, object] | None = None,
    glass: bool = False,
) -> None:
    site.seq += 1
    uas = UA_NEW if day >= site.upgrade_day + (int(u.name[1:]) % 3) else UA_OLD
    ev: dict[str, object] = {
        "ts": t,
        "user": u.name,
        "role": u.role,
        "dept": u.dept,
        "action": action,
        "patient_id": site.patients[pat]["patient_id"] if pat is not None else None,
        "study_uid": f"2.25.{hash((pat, day)) & 0xFFFFFFFFFFFF}" if pat is not None else None,
        "bytes": size,
        "src_ip": ip or u.ws_ip,
        "user_agent": ua or uas[u.ua],
        "outcome": "success" if ok else "failure",
    }
    if glass:
        ev["break_glass"] = True
    site.events.append((int(t.timestamp() * 1_000_000), site.seq, ev))
    if label is not None:
        site.labels[site.seq] = label


def _when(rng: random.Random, day0: datetime, start: float, end: float) -> datetime:
    return day0 + timedelta(hours=rng.uniform(start, end))


def _shift_span(u: User) -> tuple[float, float]:
    return (19.0, 31.0) if u.shift == "night" else (7.0, 19.0)


def _size(rng: random.Random) -> int:
    return rng.randrange(2, 400) * 1_048_576


def normal_day(site: Site, day: int) -> list[tuple[int, datetime]]:
    """The legitimate work of one day; returns (patient, time) of studies stored (for reads)."""
    rng = site.rng
    day0 = EPOCH + timedelta(days=day)
    weekend = day % 7 >= 5
    # census turnover and hand-offs
    for team, cen in site.census.items():
        for i in range(len(cen)):
            if rng.random() < 0.12:
                cen[i] = rng.choice(site.by_team[team])
    studies: list[tuple[int, datetime]] = []
    techs = [u for u in site.users if u.role == "technologist"]
    for cen in site.census.values():
        for p in cen:
            if rng.random() < (0.12 if weekend else 0.25):
                studies.append(
                    (p, _when(rng, day0, 7, 20) if rng.random() < 0.85 else _when(rng, day0, 20, 30))
                )
    for p, t in studies:
        tech = rng.choice(techs)
        emit(site, t, tech, "store", pat=p, size=_size(rng), day=day)
    handoff = {}
    for team, cen in site.census.items():
        if rng.random() < 0.3:
            dept = team.rsplit("-", 1)[0]
            others = [x for x in site.teams[dept] if x != team]
            if others:
                handoff[team] = (rng.choice(cen), rng.choice(others))
    for u in site.users:
        if (weekend and rng.random() < 0.6) or rng.random() < 0.08:
            continue  # day off
        s, e = _shift_span(u)
        overtime = rng.random() < 0.12
        if overtime:
            e += rng.uniform(1.0, 3.0)
        t_login = _when(rng, day0, s - 0.4, s + 0.5)
        ws_ip = u.ws_ip
        shared = rng.random() < 0.15
        if shared:  # a shared workstation, in the same or a neighbouring subnet
            a, b, _, _ = u.ws_ip.split(".")
            b = b if rng.random() < 0.7 else str(rng.randrange(1, 10))
            ws_ip = f"{a}.{b}.{rng.randrange(1, 4)}.{rng.randrange(10, 250)}"
        noise = "shared_workstation" if shared else ("overtime" if overtime else None)
        lab = {"label": 0, "noise": noise} if noise else None
        if rng.random() < 0.06:  # password typos
            for _ in range(rng.choice([1, 1, 2, 3])):
                emit(
                    site,
                    t_login,
                    u,
                    "login",
                    ok=False,
                    ip=ws_ip,
                    day=day,
                    label={"label": 0, "noise": "password_typo"},
                )
                t_login += timedelta(seconds=rng.randrange(5, 40))
        emit(site, t_login, u, "login", ip=ws_ip, day=day, label=lab)
        n_act = {
            "radiologist": 0,
            "technologist": 12,
            "referring_physician": 35,
            "nurse": 28,
            "him": 0,
            "researcher": 25,
            "admin": 8,
            "auditor": 6,
        }[u.role]
        cen = site.census.get(u.team or "", [])
        for _ in range(int(n_act * rng.uniform(0.6, 1.4))):
            t = _when(rng, day0, s, e)
            if t < t_login:
                t = t_login + timedelta(minutes=1)
            lab_t = (
                {"label": 0, "noise": "overtime"}
                if overtime and (t - day0).total_seconds() / 3600 > _shift_span(u)[1] + 1
                else lab
            )
            if u.role in ("referring_physician", "nurse"):
                r = rng.random()
                if u.team in handoff and r < 0.05:
                    p, _ = handoff[u.team]
                    emit(site, t, u, "view", pat=p, ip=ws_ip, day=day, label={"label": 0, "noise": "handoff"})
                    continue
                if r < 0.08:  # covering a colleague on another team of the department
                    other = rng.choice([x for x in site.teams[u.dept] if x != u.team] or [u.team or ""])
                    p = rng.choice(site.census[other])
                    emit(
                        site, t, u, "view", pat=p, ip=ws_ip, day=day, label={"label": 0, "noise": "covering"}
                    )
                    continue
                if r < 0.10 and u.role == "referring_physician":  # a consult in another department
                    other_dept = rng.choice([d for d in CLINICAL if d != u.dept])
                    p = rng.choice(site.census[rng.choice(site.teams[other_dept])])
                    if rng.random() < 0.75:  # the study is routed to the consulting department
                        tech = rng.choice(techs)
                        routed = User(tech.name, tech.role, u.dept, None, tech.shift, tech.ws_ip, ua=tech.ua)
                        emit(
                            site,
                            t - timedelta(minutes=rng.randrange(5, 120)),
                            routed,
                            "store",
                            pat=p,
                            size=_size(rng),
                            day=day,
                            label={"label": 0, "noise": "consult"},
                        )
                    emit(site, t, u, "view", pat=p, ip=ws_ip, day=day, label={"label": 0, "noise": "consult"})
                    continue
                p = rng.choice(cen)
                act = rng.choices(["query", "view", "retrieve", "download"], [25, 55, 18, 2])[0]
                emit(
                    site,
                    t,
                    u,
                    act,
                    pat=p,
                    ip=ws_ip,
                    day=day,
                    label=lab_t,
                    size=_size(rng) if act in ("retrieve", "download") else 0,
                )
            elif u.role == "technologist":
                p = rng.choice(studies)[0] if studies else rng.randrange(len(site.patients))
                emit(site, t, u, rng.choice(["query", "view"]), pat=p, ip=ws_ip, day=day, label=lab_t)
            elif u.role == "researcher":
                if u.irb and rng.random() < 0.3:  # an approved study on identified data
                    p = rng.randrange(len(site.patients))
                    emit(
                        site,
                        t,
                        u,
                        "view",
                        pat=p,
                        ip=ws_ip,
                        day=day,
                        label={"label": 0, "noise": "irb_identified"},
                    )
                else:
                    emit(
                        site,
                        t,
                        u,
                        rng.choice(["query_deid", "retrieve_deid"]),
                        ip=ws_ip,
                        day=day,
                        label=lab_t,
                    )
            elif u.role == "admin":
                emit(
                    site,
                    t,
                    u,
                    rng.choice(["admin_config", "user_mgmt", "audit_query"]),
                    ip=ws_ip,
                    day=day,
                    label=lab_t,
                )
            else:
                emit(site, t, u, "audit_query", ip=ws_ip, day=day, label=lab_t)
        if u.role == "radiologist":
            mine = [
                st
                for st in studies
                if rng.random() < 1.5 / max(1, sum(x.role == "radiologist" for x in site.users))
            ]
            for p, t in mine:
                t2 = max(t, t_login) + timedelta(minutes=rng.randrange(5, 180))
                emit(site, t2, u, "retrieve", pat=p, size=_size(rng), ip=ws_ip, day=day, label=lab)
                emit(
                    site,
                    t2 + timedelta(minutes=rng.randrange(2, 20)),
                    u,
                    "view",
                    pat=p,
                    ip=ws_ip,
                    day=day,
                    label=lab,
                )
                emit(
                    site,
                    t2 + timedelta(minutes=rng.randrange(20, 40)),
                    u,
                    "report",
                    pat=p,
                    ip=ws_ip,
                    day=day,
                    label=lab,
                )
                if rng.random() < 0.03:  # teaching file
                    emit(
                        site,
                        t2 + timedelta(minutes=45),
                        u,
                        "download",
                        pat=p,
                        size=_size(rng),
                        ip=ws_ip,
                        day=day,
                    )
        if u.role == "him":  # release of information: exports for requests, batches on Mondays
            batch = day % 7 == 0 and rng.random() < 0.7
            n = rng.randrange(35, 70) if batch else rng.randrange(3, 12)
            for _ in range(n):
                emit(
                    site,
                    _when(rng, day0, s, e),
                    u,
                    "export",
                    pat=rng.randrange(len(site.patients)),
                    size=_size(rng),
                    ip=ws_ip,
                    day=day,
                    label={"label": 0, "noise": "roi_batch" if batch else "roi"},
                )
        if u.role == "researcher" and rng.random() < 0.1:  # a de-identified bulk pull
            for _ in range(rng.randrange(200, 600)):
                emit(
                    site,
                    _when(rng, day0, s, e),
                    u,
                    "retrieve_deid",
                    size=_size(rng),
                    ip=ws_ip,
                    day=day,
                    label={"label": 0, "noise": "deid_bulk"},
                )
        emit(site, _when(rng, day0, e, e + 0.3), u, "logout", ip=ws_ip, day=day, label=lab)
        if u.oncall and rng.random() < 0.12 and u.home_ip:  # called at night, from home
            t = day0 + timedelta(hours=rng.uniform(23, 28))
            emit(
                site,
                t,
                u,
                "login",
                ip=u.home_ip,
                ua=UA_HOME,
                day=day,
                label={"label": 0, "noise": "oncall_home"},
            )
            pool = cen if cen else [p for p, _ in studies] or [0]
            for _ in range(rng.randrange(2, 7)):
                t += timedelta(minutes=rng.randrange(1, 15))
                emit(
                    site,
                    t,
                    u,
                    "view",
                    pat=rng.choice(pool),
                    ip=u.home_ip,
                    ua=UA_HOME,
                    day=day,
                    label={"label": 0, "noise": "oncall_home"},
                )
    return studies


def _external_ip(rng: random.Random, first: list[int]) -> str:
    return f"{rng.choice(first)}.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(2, 250)}"


def inject(site: Site, kind: str, n: int, day: int, subtle: bool) -> None:
    """One instance (incident) of an insider scenario starting on ``day``."""
    rng = site.rng
    inc = f"{kind}-{n}"
    lab = {"label": 1, "scenario": kind, "incident": inc}
    day0 = EPOCH + timedelta(days=day)
    clin = [u for u in site.users if u.role in ("referring_physician", "nurse")]
    u = rng.choice(clin)
    s, e = _shift_span(u)

    def outside(u: User, k: int) -> list[int]:
        pats = [i for i, p in enumerate(site.patients) if p["dept"] != u.dept]
        return rng.sample(pats, k)

    if kind == "vip_snooping":
        vips = [i for i, p in enumerate(site.patients) if p["vip"] and p["dept"] != u.dept]
        for p in rng.sample(vips, 1 if subtle else rng.randrange(1, 4)):
            t = _when(rng, day0, s + 1, e - 1)
            for _ in range(1 if subtle else rng.randrange(1, 3)):
                emit(site, t, u, "view", pat=p, day=day, label=lab)
                t += timedelta(minutes=rng.randrange(1, 10))
    elif kind == "snooping":
        k = rng.randrange(3, 6) if subtle else rng.randrange(6, 15)
        for j, p in enumerate(outside(u, k)):
            d = day + (j % 3 if subtle else 0)
            emit(
                site,
                _when(rng, EPOCH + timedelta(days=d), s + 1, e - 1),
                u,
                rng.choice(["query", "view"]),
                pat=p,
                day=d,
                label=lab,
            )
    elif kind == "bulk_export":
        k = rng.randrange(15, 30) if subtle else rng.randrange(60, 180)
        cen = site.census.get(u.team or "", [])
        t = _when(rng, day0, s + 2, e - 2)
        for j in range(k):
            p = rng.choice(cen) if j % 2 else rng.randrange(len(site.patients))
            emit(site, t, u, rng.choice(["export", "download"]), pat=p, size=_size(rng), day=day, label=lab)
            t += timedelta(seconds=rng.randrange(20, 120))
    elif kind == "off_hours":
        u = rng.choice([x for x in clin if x.shift == "day"])
        t = day0 + timedelta(hours=rng.uniform(1.0, 4.0))
        emit(site, t, u, "login", day=day, label=lab)
        cen = site.census.get(u.team or "", [])
        for j in range(rng.randrange(4, 7) if subtle else rng.randrange(10, 20)):
            t += timedelta(minutes=rng.randrange(1, 8))
            p = rng.choice(cen) if (j % 3 or (subtle and j % 2)) else rng.randrange(len(site.patients))
            emit(site, t, u, "view", pat=p, day=day, label=lab)
    elif kind == "stolen_credential":
        ip = _external_ip(rng, [45, 91, 185, 203])
        ua = UA_NEW[u.ua] if subtle else rng.choice(UA_ATTACK)
        t = _when(rng, day0, 0, 24)
        for _ in range(0 if subtle else rng.randrange(0, 4)):
            emit(site, t, u, "login", ok=False, ip=ip, ua=ua, day=day, label=lab)
            t += timedelta(seconds=rng.randrange(2, 30))
        emit(site, t, u, "login", ip=ip, ua=ua, day=day, label=lab)
        for _ in range(rng.randrange(6, 12) if subtle else rng.randrange(20, 60)):
            t += timedelta(seconds=rng.randrange(10, 120))
            emit(
                site,
                t,
                u,
                rng.choice(["retrieve", "download", "query"]),
                pat=rng.randrange(len(site.patients)),
                size=_size(rng),
                ip=ip,
                ua=ua,
                day=day,
                label=lab,
            )
    elif kind == "failed_login_burst":
        ip = _external_ip(rng, [5, 77, 141])
        t = _when(rng, day0, 0, 24)
        if n % 2:  # a spray: a few tries on many accounts from one address
            for v in rng.sample(site.users, 8 if subtle else 15):
                for _ in range(2):
                    emit(site, t, v, "login", ok=False, ip=ip, ua=UA_ATTACK[0], day=day, label=lab)
                    t += timedelta(seconds=rng.randrange(2, 15))
        else:
            for _ in range(rng.randrange(6, 9) if subtle else rng.randrange(15, 40)):
                emit(site, t, u, "login", ok=False, ip=ip, ua=UA_ATTACK[0], day=day, label=lab)
                t += timedelta(seconds=rng.randrange(3, 30 if subtle else 20))
    elif kind == "researcher_misuse":
        u = rng.choice([x for x in site.users if x.role == "researcher" and not x.irb])
        s, e = _shift_span(u)
        t = _when(rng, day0, s + 1, e - 2)
        for _ in range(rng.randrange(3, 6) if subtle else rng.randrange(10, 30)):
            t += timedelta(minutes=rng.randrange(1, 10))
            emit(
                site,
                t,
                u,
                rng.choice(["view", "retrieve", "query"]),
                pat=rng.randrange(len(site.patients)),
                size=_size(rng),
                day=day,
                label=lab,
            )
    elif kind == "low_and_slow":
        for d in range(day, min(day + 21, DAYS[0])):
            if d % 7 >= 5:
                continue
            dd = EPOCH + timedelta(days=d)
            for p in outside(u, rng.randrange(2, 4) if subtle else rng.randrange(4, 7)):
                emit(
                    site,
                    _when(rng, dd, s + 1, e - 1),
                    u,
                    "download",
                    pat=p,
                    size=_size(rng),
                    day=d,
                    label=lab,
                )


DAYS = [28]


def generate(
    out: Path, *, seed: int, days: int, users: int, subtle: bool, per_kind: int = 5
) -> dict[str, int]:
    DAYS[0] = days
    rng = random.Random(seed)
    site = build_site(rng, users, seed)
    plan = [(kind, k) for kind in SCENARIOS for k in range(per_kind)]
    warmup = min(7, days // 2)
    starts = {
        (kind, k): rng.randrange(warmup, max(warmup + 1, days - (14 if kind == "low_and_slow" else 1)))
        for kind, k in plan
    }
    for day in range(days):
        normal_day(site, day)
        for (kind, k), d in starts.items():
            if d == day:
                inject(site, kind, k, day, subtle)
    site.events.sort(key=lambda x: (x[0], x[1]))
    out.mkdir(parents=True, exist_ok=True)
    n_pos = 0
    with (out / "EVENTS.jsonl").open("w") as fe, (out / "LABELS.jsonl").open("w") as fl:
        for n, (_, seq, ev) in enumerate(site.events):
            eid = f"e{n:08d}"
            ts = ev["ts"]
            assert isinstance(ts, datetime)
            ev = {"event_id": eid, **ev, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
            fe.write(json.dumps(ev, separators=(",", ":")) + "\n")
            lab = site.labels.get(seq)
            if lab is not None:
                n_pos += int(lab.get("label", 0) == 1)
                fl.write(
                    json.dumps(
                        {
                            "event_id": eid,
                            "label": 0,
                            "scenario": None,
                            "incident": None,
                            "noise": None,
                            **lab,
                        },
                        separators=(",", ":"),
                    )
                    + "\n"
                )
    directory = {
        "epoch": EPOCH.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "departments": [*CLINICAL, "radiology", "him", "research", "it", "compliance"],
        "care_teams": dict(site.teams),
        "shift_hours": {"day": [7, 19], "night": [19, 7]},
        "users": [
            {
                "user": u.name,
                "role": u.role,
                "dept": u.dept,
                "team": u.team,
                "shift": u.shift,
                "home_ip": u.home_ip,
                "remote": u.remote,
                "irb_identified": u.irb,
            }
            for u in site.users
        ],
        "patients": site.patients,
    }
    (out / "DIRECTORY.json").write_text(json.dumps(directory, separators=(",", ":")))
    return {"events": len(site.events), "positives": n_pos, "incidents": len(plan)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--users", type=int, default=160)
    ap.add_argument("--per-kind", type=int, default=5, help="incidents of each scenario type")
    ap.add_argument("--subtle", action="store_true", help="smaller scenarios, closer to normal work")
    a = ap.parse_args()
    stats = generate(a.out, seed=a.seed, days=a.days, users=a.users, subtle=a.subtle, per_kind=a.per_kind)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
