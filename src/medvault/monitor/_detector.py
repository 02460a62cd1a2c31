"""The detector: one causal, explainable score per event, and incidents.

:class:`OnlineMonitor` keeps the whole state (plain numbers, arrays and dicts; ``snapshot`` /
``restore`` as JSON). ``observe_batch`` scores events in time order; ``observe(e)`` is a batch of
one, so the online worker and offline replay run this one code path. Causality is built in, the
way river's ``score_one``-then-``learn_one`` builds it in, but a batch at a time:

* within a day, every feature of event *i* is computed from the state before the batch and from
  the events before *i* in the batch (first occurrences, cumulative counts per user, sliding
  windows by sorted search) — integers, so a batch of any size gives exactly the same values;
* the learned baselines (per-user and per-role norms, hour profiles, how often a user's accesses
  are unexplained) change only when the first event of a new day arrives, and are computed then
  from the days before it.

So the score of an event depends only on earlier events, the directory and the dispositions given
before it, and splitting a log into batches anywhere (or restarting from a snapshot) changes no
score. Per event only exact float operations (+, -, *, /, sqrt, min, max) run on arrays; logarithms
are taken once per day per user, so there is no vector-vs-scalar rounding difference either.

Why own numpy statistics rather than scikit-learn or PyOD for the learned part: the baselines must
update causally and exactly in any batch split, snapshot to JSON, and explain themselves ("12
downloads today, your norm is 2 ± 1"); a fitted forest or one-class SVM gives none of those and
scores ~10x slower. scikit-learn's IsolationForest is the baseline the quality bench compares with.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from medvault.errors import EventOutOfOrder, MonitorStateInvalid
from medvault.monitor._directory import Directory
from medvault.monitor._events import ACTION_CODE, ACTIONS, EventBatch, MonitorEvent
from medvault.monitor._rules import RULES, Disposition, Feedback, Rule, Rules, apply_disposition

__all__ = ["Incident", "OnlineMonitor", "ScoredBatch", "ScoredEvent", "Severity"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

STATE_VERSION = 1
_DAY = 86_400
_BASE_S = 1_577_836_800  # 2020-01-01: keeps (key << 31 | seconds) composites inside int64
_SHIFT = np.int64(31)
_C = ACTION_CODE
_PATIENT_ACTIONS = np.array(
    [_C[a] for a in ("query", "view", "retrieve", "download", "export", "report")], dtype=np.int8
)
_SOURCE_ACTIONS = np.array([_C["store"], _C["report"]], dtype=np.int8)
_READ_ACTIONS = np.array([_C["view"], _C["retrieve"]], dtype=np.int8)
_OUT_ACTIONS = np.array([_C["download"], _C["export"]], dtype=np.int8)
_IDENTIFIED = np.array([_C[a] for a in ("view", "retrieve", "download", "export")], dtype=np.int8)
_LOGIN = _C["login"]
_VERSION_RE = re.compile(r"[0-9][0-9._]*")

Severity = str  # "none" | "low" | "medium" | "high" | "critical"

# positions of the rules in a row of points (the explanation path indexes plain lists)
_RULE_NAMES = tuple(rule.value for rule in RULES)
_K_BREAK_GLASS = RULES.index(Rule.BREAK_GLASS)
_K_FAILED_LOGIN_ADDRESS = RULES.index(Rule.FAILED_LOGIN_ADDRESS)
_K_FAILED_LOGIN_USER = RULES.index(Rule.FAILED_LOGIN_USER)
_K_NEW_DEVICE = RULES.index(Rule.NEW_DEVICE)
_K_NEW_NETWORK = RULES.index(Rule.NEW_NETWORK)
_K_NEW_PATIENTS = RULES.index(Rule.NEW_PATIENTS)
_K_OUTSIDE_SHIFT = RULES.index(Rule.OUTSIDE_SHIFT)
_K_RARE_ACTION = RULES.index(Rule.RARE_ACTION)
_K_RESEARCHER_IDENTIFIED = RULES.index(Rule.RESEARCHER_IDENTIFIED)
_K_UNEXPLAINED_ACCESS = RULES.index(Rule.UNEXPLAINED_ACCESS)
_K_UNUSUAL_HOUR = RULES.index(Rule.UNUSUAL_HOUR)
_K_VIP = RULES.index(Rule.VIP)
_K_VOLUME_OUT = RULES.index(Rule.VOLUME_OUT)
_K_VOLUME_READ = RULES.index(Rule.VOLUME_READ)
_K_VOLUME_WEEK = RULES.index(Rule.VOLUME_WEEK)
_FEATURES = (
    "hour",
    "failed_logins_user",
    "failed_logins_address",
    "reads_today",
    "reads_norm",
    "downloads_exports_today",
    "downloads_exports_norm",
    "downloads_exports_7d",
    "unexplained_patients_today",
    "unexplained_patients_norm",
    "hour_surprise",
    "action_surprise",
    "unexplained_surprise",
    "first_access_to_patient",
    "care_relation",
    "network_first_seen_s",
)


def _network(ip: str) -> str:
    """IPv4 /24 or IPv6 /64 of an address (string work only: cheap and total)."""
    if ":" in ip:
        return ":".join(ip.split(":")[:4]) + "::/64"
    head, _, _ = ip.rpartition(".")
    return head + ".0/24" if head else ip


def _device(user_agent: str) -> str:
    """A user agent's family: version numbers removed, so a browser upgrade is not a new device."""
    return _VERSION_RE.sub("#", user_agent)


_NEW = -2  # a name not in the vocabulary yet (-1 is None, unknown)


class _Vocab:
    """Strings to dense ints, in order of first appearance (so state is the same in any batch split)."""

    __slots__ = ("ids", "names")

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names: list[str] = list(names)
        # None (unknown) maps to -1 in the same dict, so one C-speed map() does every lookup
        self.ids: dict[str | None, int] = {None: -1, **{n: i for i, n in enumerate(self.names)}}

    def __len__(self) -> int:
        return len(self.names)

    def intern(self, values: Sequence[str | None]) -> I64:
        ids, names = self.ids, self.names
        try:  # every name known (most batches): one C-speed pass
            return np.fromiter(map(ids.get, values), dtype=np.int64, count=len(values))
        except TypeError:  # a name seen for the first time (ids.get gave None)
            pass
        n = len(values)
        codes = np.fromiter(map(ids.get, values, itertools.repeat(_NEW, n)), dtype=np.int64, count=n)
        for i in np.flatnonzero(codes == _NEW).tolist():  # in order of appearance: only those
            v = values[i]
            k = ids.get(v)
            if k is None:
                k = ids[v] = len(names)
                names.append(cast(str, v))
            codes[i] = k
        return codes


def _gather(table: I64, idx: I64) -> I64:
    """``table[idx]``, and -1 where ``idx`` is -1 (unknown)."""
    if len(table) == 0:
        return np.full(len(idx), -1, dtype=np.int64)
    return np.where(idx >= 0, table[np.maximum(idx, 0)], -1)


def _grow(a: npt.NDArray[Any], n: int, fill: float = 0) -> npt.NDArray[Any]:
    if a.shape[0] >= n:
        return a
    extra = np.full((max(n, 2 * a.shape[0]) - a.shape[0], *a.shape[1:]), fill, dtype=a.dtype)
    return np.concatenate([a, extra])


def _cumcount(keys: I64) -> I64:
    """1-based running count of each key in order (stable, exact)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    start = np.ones(n, dtype=bool)
    start[1:] = sk[1:] != sk[:-1]
    idx = np.arange(n, dtype=np.int64)
    group_start = np.maximum.accumulate(np.where(start, idx, 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = idx - group_start + 1
    return out


def _first_index(keys: I64) -> tuple[I64, I64, I64]:
    """Unique keys, the index of each key's first occurrence, and each element's key position."""
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    return uniq, first.astype(np.int64), inv.reshape(-1).astype(np.int64)


def _lookup(d: Mapping[int, int], keys: I64, default: int = -1) -> I64:
    """``d[k]`` (or ``default``) for each key, at C speed."""
    n = len(keys)
    return np.fromiter(map(d.get, keys.tolist(), itertools.repeat(default, n)), dtype=np.int64, count=n)


def _clip(x: F64, cap: float) -> F64:
    return np.minimum(np.maximum(x, 0.0), cap)


@dataclass(frozen=True, slots=True)
class Incident:
    """Alerts of one user close together in time. ``score`` = highest alert score + log2(alerts)
    + 0.5 per distinct rule beyond the first: many alerts and many kinds of evidence rank higher."""

    incident_id: str
    user: str
    first_us: int
    last_us: int
    alerts: int
    max_score: float
    rules: tuple[str, ...]

    @property
    def score(self) -> float:
        return self.max_score + math.log2(self.alerts) + 0.5 * (len(self.rules) - 1)


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """One event's verdict: ``score`` (sum of ``points``), whether it alerts, its severity, the
    incident it joined, the reasons in words and the features behind them."""

    event_id: str
    score: float
    alert: bool
    severity: Severity
    incident_id: str | None
    reasons: tuple[str, ...]
    points: Mapping[str, float]
    features: Mapping[str, float]
    incident: Incident | None = None
    user: str = ""
    patient_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The OUT.jsonl object."""
        return {
            "event_id": self.event_id,
            "score": round(self.score, 6),
            "alert": self.alert,
            "incident_id": self.incident_id,
            "reasons": list(self.reasons),
        }


@dataclass(slots=True)
class ScoredBatch:
    """Scores of a batch as arrays; explanations only for events scoring at least reason_floor."""

    event_id: list[str]
    score: F64
    alert: npt.NDArray[np.bool_]
    points: F64  # (n, len(RULES))
    incident_id: list[str | None]
    severity: list[Severity]
    reasons: dict[int, tuple[str, ...]]
    features: dict[int, dict[str, float]]
    incidents: dict[int, Incident]
    user: list[str] = field(default_factory=list)
    patient_id: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_id)

    def __iter__(self) -> Iterator[ScoredEvent]:
        for i in range(len(self.event_id)):
            yield self.event(i)

    def event(self, i: int) -> ScoredEvent:
        score = float(self.score[i])
        if score == 0.0:  # points are never negative: nothing fired (most events)
            return ScoredEvent(
                self.event_id[i], 0.0, False, "none", None, (), {}, {}, None, self.user[i], self.patient_id[i]
            )
        row = self.points[i]
        return ScoredEvent(
            event_id=self.event_id[i],
            score=float(self.score[i]),
            alert=bool(self.alert[i]),
            severity=self.severity[i],
            incident_id=self.incident_id[i],
            reasons=self.reasons.get(i, ()),
            points={r.value: float(row[k]) for k, r in enumerate(RULES) if row[k] > 0},
            features=self.features.get(i, {}),
            incident=self.incidents.get(i),
            user=self.user[i],
            patient_id=self.patient_id[i],
        )


@dataclass
class _Open:
    incident_id: str
    user: str
    first_us: int
    last_us: int
    alerts: int
    max_score: float
    rules: list[str] = field(default_factory=list)

    def view(self) -> Incident:
        return Incident(
            self.incident_id,
            self.user,
            self.first_us,
            self.last_us,
            self.alerts,
            self.max_score,
            tuple(self.rules),
        )


_VOCABS = ("users", "roles", "depts", "patients", "networks", "addresses", "devices", "agents")
_USER_F = ("mu_read", "var_read", "mu_out", "var_out", "mu_new", "var_new", "expl", "unexpl")
_USER_I = ("days", "today_read", "today_out", "today_new", "today_expl", "today_unexpl", "today_any", "role")


class OnlineMonitor:
    """The monitor's whole state and its one scoring path (``observe_batch``)."""

    def __init__(
        self,
        *,
        directory: Directory | None = None,
        rules: Rules | None = None,
        feedback: Feedback | None = None,
        late: str = "error",
    ) -> None:
        if late not in ("error", "clamp"):
            raise MonitorStateInvalid('late must be "error" or "clamp"')
        # "clamp": an event stamped earlier than the one before it (clocks of several workers
        # writing one ledger) is scored as if it came at that earlier event's time, never refused
        self.late = late
        self.rules = rules or Rules()
        self.feedback = feedback or Feedback()
        self.directory = directory or Directory.empty()
        self.users = _Vocab()
        self.roles = _Vocab()
        self.depts = _Vocab()
        self.patients = _Vocab()
        self.networks = _Vocab()
        self.addresses = _Vocab()  # raw source addresses -> their network (addr_net)
        self.agents = _Vocab()  # raw user agents -> their device family (agent_dev)
        self.addr_net = np.zeros(0, dtype=np.int64)
        self.agent_dev = np.zeros(0, dtype=np.int64)
        self.devices = _Vocab()
        self.day = -1
        self.last_us = -(2**62)
        self.next_incident = 1
        cap = 64
        self.uf: dict[str, F64] = {k: np.zeros(cap) for k in _USER_F}
        self.ui: dict[str, I64] = {k: np.full(cap, -1 if k == "role" else 0, dtype=np.int64) for k in _USER_I}
        self.hours = np.zeros((cap, 24))
        self.today_hours = np.zeros((cap, 24), dtype=np.int64)
        self.actions = np.zeros((cap, len(ACTIONS)))  # decayed counts of each action per user
        self.today_actions = np.zeros((cap, len(ACTIONS)), dtype=np.int64)
        self.prev_out = np.zeros((cap, 6), dtype=np.int64)  # downloads+exports of the 6 days before
        self.pair_seen: dict[int, int] = {}  # user<<31|patient -> last day touched
        self.team_explained: dict[int, int] = {}  # team<<31|patient -> last day of an explained touch
        self.dept_source: dict[int, int] = {}  # dept<<31|patient -> last time a study/report went there
        self.user_net: dict[int, int] = {}  # user<<31|network -> first seen (s)
        self.net_users: dict[int, int] = {}
        self.user_dev: dict[int, int] = {}
        self.dev_users: dict[int, int] = {}
        self.fail_user: dict[int, list[int]] = {}
        self.fail_addr: dict[int, list[int]] = {}
        self.open: dict[int, _Open] = {}
        self._tables_for(0)
        self._derive_directory()
        self._ensure_capacity()

    # -- derived tables ------------------------------------------------------------------------

    def _tables_for(self, n_roles: int) -> None:
        """Per-user costs and norms used while scoring a day (recomputed at each day change)."""
        cap = self.hours.shape[0]
        self.t_users = 0  # users that have rows in the tables below
        self.t_hour_cost = np.full((cap, 24), math.log(24.0))
        self.t_action_cost = np.full((cap, len(ACTIONS)), math.log(len(ACTIONS)))
        self.t_unexpl_cost = np.zeros(cap)
        self.t_norm = {
            k: np.zeros(cap) for k in ("mu_read", "sd_read", "mu_out", "sd_out", "mu_new", "sd_new")
        }
        self.t_norm_sd_default = 0.0
        # role rows (last row: everyone, for roles first seen today)
        self.r_hour_cost = np.full((n_roles + 1, 24), math.log(24.0))
        self.r_action_cost = np.full((n_roles + 1, len(ACTIONS)), math.log(len(ACTIONS)))
        self.r_unexpl_cost = np.zeros(n_roles + 1)
        self.r_norm = {k: np.full(n_roles + 1, np.inf if k.startswith("sd_") else 0.0) for k in self.t_norm}
        for k in self.t_norm:
            if k.startswith("sd_"):
                self.t_norm[k][:] = np.inf
        self.r_count = n_roles

    def _derive_directory(self) -> None:
        """Directory facts as arrays over the user/patient vocabularies. Every name the directory
        holds is interned first, in directory order, so ids never depend on how events were batched."""
        d = self.directory
        self.users.intern(list(d.users))
        self.patients.intern(list(d.patients))
        for info in d.users.values():
            self.roles.intern([info.role])
            self.depts.intern([info.dept, None if info.team is None else "team:" + info.team])
            self.networks.intern([None if info.home_ip is None else _network(info.home_ip)])
        for pinfo in d.patients.values():
            self.depts.intern([pinfo.dept, None if pinfo.team is None else "team:" + pinfo.team])
        self.d_role = np.full(1, -1, dtype=np.int64)
        self.d_dept = np.full(1, -1, dtype=np.int64)
        self.d_team = np.full(1, -1, dtype=np.int64)
        self.d_irb = np.zeros(1, dtype=bool)
        self.d_remote = np.zeros(1, dtype=bool)
        self.d_home = np.full(1, -1, dtype=np.int64)
        self.d_shift = np.ones((1, 24), dtype=bool)
        self.d_has_shift = np.zeros(1, dtype=bool)
        self.f_rule = np.ones((1, len(RULES)))
        self.p_dept = np.full(1, -1, dtype=np.int64)
        self.p_team = np.full(1, -1, dtype=np.int64)
        self.p_vip = np.zeros(1, dtype=bool)
        self._derived_users = self._derived_patients = 0
        self._extend_directory()

    def _extend_directory(self) -> None:
        """Rows of the directory arrays for users and patients interned since the last call."""
        d, ids = self.directory, self.depts.ids
        nu, npat = len(self.users), len(self.patients)
        u0, p0 = self._derived_users, self._derived_patients
        if nu > u0:
            cap = max(nu, 2 * u0, 1)
            self.d_role = _grow(self.d_role, cap, -1)
            self.d_dept = _grow(self.d_dept, cap, -1)
            self.d_team = _grow(self.d_team, cap, -1)
            self.d_irb = _grow(self.d_irb, cap, False)
            self.d_remote = _grow(self.d_remote, cap, False)
            self.d_home = _grow(self.d_home, cap, -1)
            self.d_shift = _grow(self.d_shift, cap, True)
            self.d_has_shift = _grow(self.d_has_shift, cap, False)
            self.f_rule = _grow(self.f_rule, cap, 1.0)
            grace = self.rules.shift_grace_hours
            site = np.array([self.feedback.site_rule.get(rule.value, 1.0) for rule in RULES])
            for i in range(u0, nu):
                name = self.users.names[i]
                self.f_rule[i] = site * np.array(
                    [self.feedback.user_rule.get((name, rule.value), 1.0) for rule in RULES]
                )
                info = d.users.get(name)
                if info is None:
                    continue
                self.d_role[i] = self.roles.ids[info.role] if info.role else -1
                self.d_dept[i] = ids[info.dept] if info.dept else -1
                self.d_team[i] = ids["team:" + info.team] if info.team else -1
                self.d_irb[i] = info.irb_identified
                self.d_remote[i] = info.remote
                self.d_home[i] = self.networks.ids[_network(info.home_ip)] if info.home_ip else -1
                if d.in_shift(info.shift, 0) is not None:
                    self.d_has_shift[i] = True
                    for h in range(24):
                        self.d_shift[i, h] = any(
                            d.in_shift(info.shift, (h + dh) % 24) for dh in range(-grace, grace + 1)
                        )
        if npat > p0:
            cap = max(npat, 2 * p0, 1)
            self.p_dept = _grow(self.p_dept, cap, -1)
            self.p_team = _grow(self.p_team, cap, -1)
            self.p_vip = _grow(self.p_vip, cap, False)
            for i in range(p0, npat):
                pinfo = d.patients.get(self.patients.names[i])
                if pinfo is None:
                    continue
                self.p_dept[i] = ids[pinfo.dept] if pinfo.dept else -1
                self.p_team[i] = ids["team:" + pinfo.team] if pinfo.team else -1
                self.p_vip[i] = pinfo.vip
        self._derived_users, self._derived_patients = nu, npat

    def _derive_families(self) -> None:
        """Network of each new address and device family of each new user agent, in id order."""
        for vocab, table, derive, target in (
            (self.addresses, "addr_net", _network, self.networks),
            (self.agents, "agent_dev", _device, self.devices),
        ):
            have = getattr(self, table)
            if len(have) < len(vocab):
                new = target.intern([derive(x) for x in vocab.names[len(have) :]])
                setattr(self, table, np.concatenate([have, new]))

    def _ensure_capacity(self) -> None:
        nu = len(self.users)
        if self.hours.shape[0] >= nu:
            return
        for k in _USER_F:
            self.uf[k] = _grow(self.uf[k], nu)
        for k in _USER_I:
            self.ui[k] = _grow(self.ui[k], nu, -1 if k == "role" else 0)
        self.hours = _grow(self.hours, nu)
        self.today_hours = _grow(self.today_hours, nu)
        self.actions = _grow(self.actions, nu)
        self.today_actions = _grow(self.today_actions, nu)
        self.prev_out = _grow(self.prev_out, nu)

    def set_directory(self, directory: Directory) -> None:
        """A new directory, in force from the next event on."""
        self.directory = directory
        self._derive_directory()

    def resolve(
        self,
        *,
        user: str,
        fired: Mapping[str, float],
        disposition: Disposition,
        patient_id: str | None = None,
    ) -> None:
        """An officer's disposition of an alert, in force from the next event on."""
        self.feedback = apply_disposition(
            self.feedback, self.rules, user=user, fired=fired, disposition=disposition, patient_id=patient_id
        )
        site = np.array([self.feedback.site_rule.get(rule.value, 1.0) for rule in RULES])
        for i, name in enumerate(self.users.names):
            self.f_rule[i] = site * np.array(
                [self.feedback.user_rule.get((name, rl.value), 1.0) for rl in RULES]
            )

    # -- scoring -------------------------------------------------------------------------------

    def observe(self, event: MonitorEvent) -> ScoredEvent:
        """Score one event, then learn from it (a batch of one)."""
        return self.observe_batch(EventBatch.of([event])).event(0)

    def observe_batch(self, batch: EventBatch) -> ScoredBatch:
        """Score events in time order, each from the state before it, and learn from them."""
        n = len(batch)
        ts = batch.ts_us
        if self.late == "clamp" and n and (ts[0] < self.last_us or bool(np.any(ts[1:] < ts[:-1]))):
            ts = np.maximum.accumulate(np.maximum(ts, self.last_us))
            batch = dataclasses.replace(batch, ts_us=ts)
        if n and (ts[0] < self.last_us or bool(np.any(ts[1:] < ts[:-1]))):
            bad = 0 if ts[0] < self.last_us else int(np.argmax(ts[1:] < ts[:-1])) + 1
            raise EventOutOfOrder(f"event {bad + 1} of the batch is earlier than the event before it")
        out = ScoredBatch(
            event_id=list(batch.event_id),
            score=np.zeros(n),
            alert=np.zeros(n, dtype=bool),
            points=np.zeros((n, len(RULES))),
            incident_id=[None] * n,
            severity=["none"] * n,
            reasons={},
            features={},
            incidents={},
            user=batch.user,
            patient_id=batch.patient_id,
        )
        if n == 0:
            return out
        off = self.directory.utc_offset_minutes * 60
        t_s = ts // 1_000_000
        day = (t_s + off) // _DAY
        cuts = np.flatnonzero(day[1:] != day[:-1]) + 1
        bounds = [0, *cuts.tolist(), n]
        for a, b in itertools.pairwise(bounds):
            d = int(day[a])
            if d != self.day:
                self._new_day(d)
            self._score_day(batch.slice(a, b), out, a)
        self.last_us = int(ts[-1])
        return out

    def _intern(self, batch: EventBatch) -> dict[str, I64]:
        u = self.users.intern(batch.user)
        pat = self.patients.intern(batch.patient_id)
        addr = self.addresses.intern(batch.src_ip)
        agent = self.agents.intern(batch.user_agent)
        self._derive_families()
        nets = _gather(self.addr_net, addr)
        devs = _gather(self.agent_dev, agent)
        ev_role = self.roles.intern(batch.role)
        ev_dept = self.depts.intern(batch.dept)
        self._extend_directory()
        self._ensure_capacity()
        role = np.where(self.d_role[u] >= 0, self.d_role[u], ev_role)
        dept = np.where(ev_dept >= 0, ev_dept, self.d_dept[u])
        team = np.where(self.d_team[u] >= 0, self.d_team[u], dept)
        team = np.where(team >= 0, team, -2 - u)  # no team known: the user alone
        return {
            "u": u,
            "pat": pat,
            "net": nets,
            "addr": addr,
            "dev": devs,
            "role": role,
            "dept": dept,
            "team": team,
        }

    def _score_day(self, batch: EventBatch, out: ScoredBatch, offset: int) -> None:
        r = self.rules
        n = len(batch)
        ids = self._intern(batch)
        u, pat, role, dept, team = ids["u"], ids["pat"], ids["role"], ids["dept"], ids["team"]
        act = batch.action
        fail = batch.failure
        ok = ~fail
        t_s = batch.ts_us // 1_000_000
        rel_t = t_s - _BASE_S
        hour = ((t_s + self.directory.utc_offset_minutes * 60) // 3600) % 24
        np.arange(n, dtype=np.int64)
        has_pat = pat >= 0
        access = np.isin(act, _PATIENT_ACTIONS) & has_pat & ok
        source = np.isin(act, _SOURCE_ACTIONS) & has_pat & ok
        touch = access | source
        read_vol = np.isin(act, _READ_ACTIONS) & ok
        out_vol = np.isin(act, _OUT_ACTIONS) & ok
        login = act == _LOGIN
        patc = np.where(has_pat, pat, 0)

        # -- the user-patient relation -------------------------------------------------------
        pair = (u << _SHIFT) | patc
        tkey = ((team + 2**20) << _SHIFT) | patc  # team ids may be negative (per-user pseudo-teams)
        dkey = (np.maximum(dept, 0) << _SHIFT) | patc
        pair_seen = np.zeros(n, dtype=bool)
        ti = np.flatnonzero(touch)
        if len(ti):
            uk, first, inv = _first_index(pair[ti])
            in_state = _lookup(self.pair_seen, uk) >= 0
            pair_seen[ti] = in_state[inv] | (np.arange(len(ti)) != first[inv])
        # direct explanations: the directory's care team / department, a study or report of the
        # patient sent to the user's department, the event itself producing it, an officer's note
        dir_team = (self.p_team[patc] >= 0) & (self.p_team[patc] == team) & has_pat
        dir_dept = (self.p_dept[patc] >= 0) & (self.p_dept[patc] == dept) & has_pat
        sent = np.zeros(n, dtype=bool)
        si = np.flatnonzero(source & (dept >= 0))
        ai = np.flatnonzero(access & (dept >= 0))
        if len(ai):
            last_src = _lookup(self.dept_source, dkey[ai], -(2**40))
            sent[ai] = last_src >= rel_t[ai] - r.relation_days * _DAY
            if len(si):
                suk, sfirst, _ = _first_index(dkey[si])
                pos = np.clip(np.searchsorted(suk, dkey[ai]), 0, len(suk) - 1)
                hit = (suk[pos] == dkey[ai]) & (si[sfirst[pos]] < ai)
                sent[ai] |= hit
        noted = np.zeros(n, dtype=bool)
        pairs = self.feedback.explained_pairs
        if pairs and len(ti):
            noted[ti] = np.fromiter(
                ((batch.user[i], batch.patient_id[i]) in pairs for i in ti.tolist()),
                dtype=bool,
                count=len(ti),
            )
        base = source | dir_team | dir_dept | sent | noted
        # prior explained touch of this patient by the user's team (the user included)
        team_prior = np.zeros(n, dtype=bool)
        if len(ti):
            tk, _, tinv = _first_index(tkey[ti])
            in_state = _lookup(self.team_explained, tk) >= 0
            bi = ti[base[ti]]
            earlier = np.zeros(len(ti), dtype=bool)
            if len(bi):
                buk, bfirst, _ = _first_index(tkey[bi])
                pos = np.clip(np.searchsorted(buk, tkey[ti]), 0, len(buk) - 1)
                earlier = (buk[pos] == tkey[ti]) & (bi[bfirst[pos]] < ti)
            team_prior[ti] = in_state[tinv] | earlier
        explained = base | team_prior
        unexplained = access & ~explained

        # -- counts so far today (this event included) ----------------------------------------
        ui = self.ui
        x_read = np.zeros(n, dtype=np.int64)
        x_out = np.zeros(n, dtype=np.int64)
        x_new = np.zeros(n, dtype=np.int64)
        for mask, name, x in ((read_vol, "today_read", x_read), (out_vol, "today_out", x_out)):
            k = np.flatnonzero(mask)
            if len(k):
                x[k] = ui[name][u[k]] + _cumcount(u[k])
        new_unexpl = unexplained & ~pair_seen
        k = np.flatnonzero(new_unexpl)
        if len(k):
            x_new[k] = ui["today_new"][u[k]] + _cumcount(u[k])
        x_week = np.where(out_vol, self.prev_out[u].sum(axis=1) + x_out, 0)

        # -- failed sign-ins in the sliding window --------------------------------------------
        n_fail_user = np.zeros(n, dtype=np.int64)
        n_fail_addr = np.zeros(n, dtype=np.int64)
        li = np.flatnonzero(login)
        if len(li):
            n_fail_user[li] = self._window(self.fail_user, u[li], rel_t[li], fail[li])
            addr = ids["addr"][li]
            has = addr >= 0
            if has.any():
                n_fail_addr[li[has]] = self._window(self.fail_addr, addr[has], rel_t[li][has], fail[li][has])

        # -- networks and devices ---------------------------------------------------------------
        net_fresh, net_known, net_first = self._novelty(
            u, ids["net"], rel_t, ok, self.user_net, self.net_users
        )
        dev_fresh, dev_known, _ = self._novelty(u, ids["dev"], rel_t, ok, self.user_dev, self.dev_users)
        home = (self.d_home[u] >= 0) & (self.d_home[u] == ids["net"])
        mature = ui["days"][u] >= r.min_history_days

        # -- baselines (from days before today) ---------------------------------------------------
        known_user = u < self.t_users
        urow = np.where(known_user, u, 0)
        rrow = np.where((role >= 0) & (role < self.r_count), role, self.r_count)

        nm = {
            name: np.where(known_user, self.t_norm[name][urow], self.r_norm[name][rrow])
            for name in self.t_norm
        }

        def norm(name: str) -> F64:
            return nm[name]

        hour_cost = np.where(known_user, self.t_hour_cost[urow, hour], self.r_hour_cost[rrow, hour])
        a64 = act.astype(np.int64)
        action_cost = np.where(known_user, self.t_action_cost[urow, a64], self.r_action_cost[rrow, a64])
        unexpl_cost = np.where(known_user, self.t_unexpl_cost[urow], self.r_unexpl_cost[rrow])

        # -- points ------------------------------------------------------------------------------
        pts = np.zeros((n, len(RULES)))
        col = {rule: k for k, rule in enumerate(RULES)}
        over_u = np.maximum(n_fail_user - r.failed_login_user_burst + 1, 0)
        pts[:, col[Rule.FAILED_LOGIN_USER]] = np.minimum(over_u * r.failed_login_points, r.failed_login_cap)
        over_a = np.maximum(n_fail_addr - r.failed_login_address_burst + 1, 0)
        cap_fail = r.failed_login_cap
        pts[:, col[Rule.FAILED_LOGIN_ADDRESS]] = np.minimum(over_a * r.failed_login_points, cap_fail)
        active = touch | login | read_vol | out_vol
        off_shift = self.d_has_shift[u] & ~self.d_shift[u, hour] & active & ok
        pts[:, col[Rule.OUTSIDE_SHIFT]] = np.where(off_shift, r.outside_shift_points, 0.0)
        pts[:, col[Rule.UNUSUAL_HOUR]] = np.where(
            active & ok,
            _clip((hour_cost - r.unusual_hour_surprise) * r.unusual_hour_points, r.unusual_hour_cap),
            0.0,
        )
        pts[:, col[Rule.RARE_ACTION]] = np.where(
            ok, _clip((action_cost - r.rare_action_surprise) * r.rare_action_points, r.rare_action_cap), 0.0
        )
        z_read = (x_read - norm("mu_read")) / norm("sd_read")
        z_out = (x_out - norm("mu_out")) / norm("sd_out")
        z_week = (x_week - 7.0 * norm("mu_out")) / (norm("sd_out") * math.sqrt(7.0))
        z_new = (x_new - norm("mu_new")) / norm("sd_new")
        pts[:, col[Rule.VOLUME_READ]] = np.where(
            read_vol, _clip((z_read - r.volume_z) * r.volume_points, r.volume_cap), 0.0
        )
        pts[:, col[Rule.VOLUME_OUT]] = np.where(
            out_vol, _clip((z_out - r.volume_z) * r.volume_points, r.volume_cap), 0.0
        )
        pts[:, col[Rule.VOLUME_WEEK]] = np.where(
            out_vol, _clip((z_week - r.week_z) * r.week_points, r.week_cap), 0.0
        )
        remote = np.where(self.d_remote[u], r.remote_factor, 1.0)
        net_pts = np.where(net_known, r.known_network_points, r.new_network_points) * remote
        # failed sign-ins count too: a password tried from a network the user never used is evidence
        pts[:, col[Rule.NEW_NETWORK]] = np.where(net_fresh & mature & ~home & (ok | login), net_pts, 0.0)
        dev_pts = np.where(dev_known, 0.0, r.new_device_points)
        pts[:, col[Rule.NEW_DEVICE]] = np.where(dev_fresh & mature & (ok | login), dev_pts, 0.0)
        # data leaving (download/export) without a care relation weighs more than a look
        leaving = np.where(out_vol, r.unexplained_out_factor, 1.0)
        pts[:, col[Rule.UNEXPLAINED_ACCESS]] = np.where(
            unexplained,
            _clip((unexpl_cost - r.unexplained_offset) * r.unexplained_points * leaving, r.unexplained_cap),
            0.0,
        )
        pts[:, col[Rule.NEW_PATIENTS]] = np.where(
            new_unexpl, _clip((z_new - r.new_patients_z) * r.new_patients_points, r.new_patients_cap), 0.0
        )
        researcher = np.isin(role, self._researcher_roles())
        ident = np.isin(act, _IDENTIFIED) | ((act == _C["query"]) & has_pat)
        pts[:, col[Rule.RESEARCHER_IDENTIFIED]] = np.where(
            researcher & ident & ok & ~self.d_irb[u], r.researcher_identified_points, 0.0
        )
        pts[:, col[Rule.BREAK_GLASS]] = np.where(batch.break_glass & ok, r.break_glass_points, 0.0)
        vip = self.p_vip[patc] & access
        pts[:, col[Rule.VIP]] = np.where(
            vip, np.where(unexplained, r.vip_unexplained_points, r.vip_points), 0.0
        )
        pts *= self.f_rule[u]
        score = pts.sum(axis=1)
        sl = slice(offset, offset + n)
        out.points[sl] = pts
        out.score[sl] = score
        alert = score >= r.alert_score
        out.alert[sl] = alert

        # -- explanations and incidents (only the few events that score) ---------------------
        # the features of those events are gathered as arrays first, then walked as lists
        idx = np.flatnonzero(score >= r.reason_floor)
        if len(idx):
            f64 = np.float64
            net_age = np.where(net_first >= 0, (rel_t - net_first).astype(f64), -1.0)
            columns = [
                hour.astype(f64),
                n_fail_user.astype(f64),
                n_fail_addr.astype(f64),
                x_read.astype(f64),
                norm("mu_read"),
                x_out.astype(f64),
                norm("mu_out"),
                x_week.astype(f64),
                x_new.astype(f64),
                norm("mu_new"),
                hour_cost,
                action_cost,
                unexpl_cost,
                (touch & ~pair_seen).astype(f64),
                explained.astype(f64),
                net_age,
            ]
            rows = zip(*(np.asarray(c[idx], dtype=f64).tolist() for c in columns), strict=True)
            flags = zip(
                idx.tolist(),
                score[idx].tolist(),
                pts[idx].tolist(),
                access[idx].tolist(),
                pair_seen[idx].tolist(),
                dir_dept[idx].tolist(),
                net_known[idx].tolist(),
                act[idx].tolist(),
                alert[idx].tolist(),
                u[idx].tolist(),
                batch.ts_us[idx].tolist(),
                strict=True,
            )
            for values, (i, s, p, acc, seen, ddept, nknown, a, alerting, ui_, t_us) in zip(
                rows, flags, strict=True
            ):
                j = offset + i
                out.severity[j] = (
                    "critical"
                    if s >= r.critical_score
                    else "high"
                    if s >= r.high_score
                    else "medium"
                    if s >= r.alert_score
                    else "low"
                )
                feats = dict(zip(_FEATURES, values, strict=True))
                out.features[j] = feats
                out.reasons[j] = tuple(self._reasons(p, feats, acc, seen, ddept, nknown, ACTIONS[a].value))
                if alerting:
                    out.incidents[j] = self._incident(ui_, t_us, s, p)
                    out.incident_id[j] = out.incidents[j].incident_id
        self._learn(
            batch,
            ids,
            t_s,
            rel_t,
            hour,
            touch,
            source,
            explained,
            access,
            unexplained,
            new_unexpl,
            read_vol,
            out_vol,
            login,
            fail,
            pair,
            tkey,
            dkey,
        )

    def _researcher_roles(self) -> I64:
        names = [n for n in self.rules.researcher_roles if n in self.roles.ids]
        return np.array([self.roles.ids[n] for n in names], dtype=np.int64)

    def _window(self, tails: dict[int, list[int]], keys: I64, t: I64, is_fail: B) -> I64:
        """Failures with the same key in (t - W, t], this event included, for each login."""
        # C(i): failures of the key so far (tail + batch up to i); D(i): those at or before t - W
        window = self.rules.failed_login_window_s
        tail_len = np.fromiter(
            (len(tails.get(k, ())) for k in keys.tolist()), dtype=np.int64, count=len(keys)
        )
        c = tail_len + _cum_flag(keys, is_fail)
        fkeys = keys[is_fail]
        all_k = [np.asarray(fkeys, dtype=np.int64)]
        all_t = [np.asarray(t[is_fail], dtype=np.int64)]
        for k in set(keys.tolist()):
            if k in tails:
                all_k.append(np.full(len(tails[k]), k, dtype=np.int64))
                all_t.append(np.asarray(tails[k], dtype=np.int64))
        comp = np.sort((np.concatenate(all_k) << _SHIFT) | np.concatenate(all_t))
        lo = np.searchsorted(comp, keys << _SHIFT, side="left")
        hi = np.searchsorted(comp, (keys << _SHIFT) | np.maximum(t - window, 0), side="right")
        return c - (hi - lo)

    def _novelty(
        self, u: I64, key_id: I64, rel_t: I64, ok: B, user_key: dict[int, int], key_users: dict[int, int]
    ) -> tuple[B, B, I64]:
        """For each event: is its network/device new for the user (first seen within fresh_hours),
        was it already used by site_min_users other users, and when the user first used it. Only
        successful events teach a network or device: a password spray from one address must not
        make that address "known on site"."""
        n = len(u)
        fresh = np.zeros(n, dtype=bool)
        known = np.zeros(n, dtype=bool)
        first_t = np.full(n, -1, dtype=np.int64)
        ki = np.flatnonzero(key_id >= 0)
        if not len(ki):
            return fresh, known, first_t
        pk = (u[ki] << _SHIFT) | key_id[ki]
        t = rel_t[ki]
        pos = np.arange(len(ki), dtype=np.int64)
        state_first = _lookup(user_key, pk)
        # the first successful use of the same (user, key) in this batch, at or before each event
        first_ok = np.full(len(ki), len(ki), dtype=np.int64)
        learn = ok[ki]
        li = np.flatnonzero(learn)
        if len(li):
            luk, lfirst, _ = _first_index(pk[li])
            at = np.clip(np.searchsorted(luk, pk), 0, len(luk) - 1)
            found = luk[at] == pk
            first_ok = np.where(found, li[lfirst[at]], len(ki))
        seen_ok = first_ok <= pos
        ft = np.where(
            state_first >= 0, state_first, np.where(seen_ok, t[np.minimum(first_ok, len(ki) - 1)], t)
        )
        first_t[ki] = ft
        fresh[ki] = t - ft < self.rules.fresh_hours * 3600
        # distinct users who used this key successfully before the event: state + new pairs here
        is_new_pair = learn & (state_first < 0) & (first_ok == pos)
        before = _lookup(key_users, key_id[ki], 0) + _cum_flag(key_id[ki], is_new_pair) - is_new_pair
        known[ki] = before >= self.rules.site_min_users
        return fresh, known, first_t

    def _reasons(
        self,
        p: list[float],
        f: dict[str, float],
        access: bool,
        seen: bool,
        dept_only: bool,
        net_known: bool,
        action: str,
    ) -> list[str]:
        out: list[str] = []
        if p[_K_UNEXPLAINED_ACCESS] > 0 or (p[_K_VIP] > 0 and f["care_relation"] == 0):
            out.append(
                ("first access to this patient" if not seen else "repeat access to this patient")
                + "; no care relation (not the care team or department, no study sent to the department,"
                " no explained prior access by the team)"
            )
        if p[_K_NEW_PATIENTS] > 0:
            out.append(
                f"{f['unexplained_patients_today']:.0f} unexplained patients today"
                f" (norm {f['unexplained_patients_norm']:.1f})"
            )
        if p[_K_VIP] > 0:
            out.append("VIP patient")
        if p[_K_BREAK_GLASS] > 0:
            out.append("break-glass access")
        if p[_K_RESEARCHER_IDENTIFIED] > 0:
            out.append("researcher without identified-data approval accessed identified data")
        if p[_K_OUTSIDE_SHIFT] > 0:
            out.append(f"outside shift (hour {f['hour']:.0f})")
        if p[_K_UNUSUAL_HOUR] > 0:
            out.append(f"unusual hour for this user (hour {f['hour']:.0f})")
        if p[_K_RARE_ACTION] > 0:
            out.append(f"{action}: an action this user rarely takes")
        if p[_K_VOLUME_READ] > 0:
            out.append(f"{f['reads_today']:.0f} views/retrievals today (norm {f['reads_norm']:.1f})")
        if p[_K_VOLUME_OUT] > 0:
            out.append(
                f"{f['downloads_exports_today']:.0f} downloads/exports today"
                f" (norm {f['downloads_exports_norm']:.1f})"
            )
        if p[_K_VOLUME_WEEK] > 0:
            out.append(
                f"{f['downloads_exports_7d']:.0f} downloads/exports in 7 days"
                f" (norm {7 * f['downloads_exports_norm']:.1f})"
            )
        if p[_K_NEW_NETWORK] > 0:
            out.append(
                "network new for this user" + (" (known on site)" if net_known else ", unknown on site")
            )
        if p[_K_NEW_DEVICE] > 0:
            out.append("device (user agent) new for this user and on site")
        if p[_K_FAILED_LOGIN_USER] > 0:
            out.append(f"{f['failed_logins_user']:.0f} failed sign-ins of this user in the window")
        if p[_K_FAILED_LOGIN_ADDRESS] > 0:
            out.append(f"{f['failed_logins_address']:.0f} failed sign-ins from this address in the window")
        if access and dept_only and not out:
            out.append("department relation only")
        return out

    def _incident(self, u: int, t_us: int, score: float, p: list[float]) -> Incident:
        gap = int(self.rules.incident_gap_hours * 3_600_000_000)
        inc = self.open.get(u)
        fired = [name for name, v in zip(_RULE_NAMES, p, strict=True) if v > 0]
        if inc is None or t_us - inc.last_us > gap:
            inc = _Open(f"inc-{self.next_incident:06d}", self.users.names[u], t_us, t_us, 0, 0.0)
            self.next_incident += 1
            self.open[u] = inc
        inc.last_us = t_us
        inc.alerts += 1
        inc.max_score = max(inc.max_score, score)
        inc.rules.extend(r for r in fired if r not in inc.rules)
        return inc.view()

    # -- learning ------------------------------------------------------------------------------

    def _learn(
        self,
        batch: EventBatch,
        ids: dict[str, I64],
        t_s: I64,
        rel_t: I64,
        hour: I64,
        touch: B,
        source: B,
        explained: B,
        access: B,
        unexplained: B,
        new_unexpl: B,
        read_vol: B,
        out_vol: B,
        login: B,
        fail: B,
        pair: I64,
        tkey: I64,
        dkey: I64,
    ) -> None:
        u = ids["u"]
        nu = len(self.users)
        ui = self.ui

        def add(name: str, mask: B) -> None:
            ui[name][:nu] += np.bincount(u[mask], minlength=nu)[:nu]

        add("today_read", read_vol)
        add("today_out", out_vol)
        add("today_new", new_unexpl)
        add("today_expl", access & explained)
        add("today_unexpl", unexplained)
        add("today_any", np.ones(len(u), dtype=bool))
        np.add.at(self.today_hours, (u, hour), 1)
        np.add.at(self.today_actions, (u[~fail], batch.action[~fail].astype(np.int64)), 1)
        last = len(u) - 1 - np.unique(u[::-1], return_index=True)[1]
        ui["role"][u[last]] = ids["role"][last]
        today = self.day
        self.pair_seen.update(dict.fromkeys(np.unique(pair[touch]).tolist(), today))
        self.team_explained.update(dict.fromkeys(np.unique(tkey[touch & explained]).tolist(), today))
        si = np.flatnonzero(source & (ids["dept"] >= 0))
        self.dept_source.update(zip(dkey[si].tolist(), rel_t[si].tolist(), strict=True))  # the last wins
        for key_id, user_key, key_users in (
            (ids["net"], self.user_net, self.net_users),
            (ids["dev"], self.user_dev, self.dev_users),
        ):
            ki = np.flatnonzero((key_id >= 0) & ~fail)  # only successful use teaches a network/device
            # each (user, key) pair once, at its first use in the batch (the earliest: time order)
            pk, first = np.unique((u[ki] << _SHIFT) | key_id[ki], return_index=True)
            ki = ki[first]
            for k, kid, t in zip(pk.tolist(), key_id[ki].tolist(), rel_t[ki].tolist(), strict=True):
                if k not in user_key:
                    user_key[k] = t
                    key_users[kid] = key_users.get(kid, 0) + 1
        horizon = int(rel_t[-1]) - self.rules.failed_login_window_s
        li = np.flatnonzero(login & fail)
        for tails, keys in ((self.fail_user, u[li]), (self.fail_addr, ids["addr"][li])):
            for k, t in zip(keys.tolist(), rel_t[li].tolist(), strict=True):
                if k >= 0:
                    tails.setdefault(k, []).append(t)
            for k in [k for k, v in tails.items() if v[-1] <= horizon]:
                del tails[k]
            for k, v in tails.items():
                if v[0] <= horizon:
                    tails[k] = [x for x in v if x > horizon]

    def _new_day(self, day: int) -> None:
        """Fold the finished day into the baselines and recompute the tables for ``day``."""
        r = self.rules
        nu = len(self.users)
        ui, uf = self.ui, self.uf
        if self.day >= 0 and nu:
            a = 1.0 - 0.5 ** (1.0 / r.half_life_days)
            act = ui["today_any"][:nu] > 0
            for name, mu, var in (
                ("today_read", "mu_read", "var_read"),
                ("today_out", "mu_out", "var_out"),
                ("today_new", "mu_new", "var_new"),
            ):
                x = ui[name][:nu].astype(np.float64)
                m, v = uf[mu][:nu], uf[var][:nu]
                first = ui["days"][:nu] == 0
                d = x - m
                new_m = np.where(first, x, m + a * d)
                new_v = np.where(first, 0.0, (1.0 - a) * (v + a * d * d))
                uf[mu][:nu] = np.where(act, new_m, m)
                uf[var][:nu] = np.where(act, new_v, v)
            self.hours[:nu] = np.where(
                act[:, None], self.hours[:nu] * (1.0 - a) + self.today_hours[:nu], self.hours[:nu]
            )
            self.actions[:nu] = np.where(
                act[:, None], self.actions[:nu] * (1.0 - a) + self.today_actions[:nu], self.actions[:nu]
            )
            for name, cnt in (("expl", "today_expl"), ("unexpl", "today_unexpl")):
                uf[name][:nu] = np.where(act, uf[name][:nu] * (1.0 - a) + ui[cnt][:nu], uf[name][:nu])
            ui["days"][:nu] += act
            # the 6 days before ``day``: old window, the finished day, then days without events
            gap = min(max(day - self.day, 1), 7)
            pad = np.zeros((nu, gap - 1), dtype=np.int64)
            rolled = np.concatenate([self.prev_out[:nu], ui["today_out"][:nu, None], pad], axis=1)
            self.prev_out[:nu] = rolled[:, -6:]
            for name in ("today_read", "today_out", "today_new", "today_expl", "today_unexpl", "today_any"):
                ui[name][:] = 0
            self.today_hours[:] = 0
            self.today_actions[:] = 0
            if day % 7 == 0:
                self._prune(day)
        self.day = day
        self._recompute_tables()

    def _prune(self, day: int) -> None:
        keep = day - self.rules.memory_days
        self.pair_seen = {k: v for k, v in self.pair_seen.items() if v >= keep}
        self.team_explained = {k: v for k, v in self.team_explained.items() if v >= keep}
        horizon = (day - self.rules.relation_days - 1) * _DAY - _BASE_S
        self.dept_source = {k: v for k, v in self.dept_source.items() if v >= horizon}

    def _recompute_tables(self) -> None:
        r = self.rules
        nu = len(self.users)
        n_roles = len(self.roles)
        self._tables_for(n_roles)
        uf, ui = self.uf, self.ui
        days = ui["days"][:nu].astype(np.float64)
        has = days > 0
        role = ui["role"][:nu]
        groups = [np.flatnonzero(has & (role == k)) for k in range(n_roles)] + [np.flatnonzero(has)]
        k0 = r.prior_days
        for g_idx, members in enumerate(groups):
            if len(members) == 0:
                continue
            for m in ("read", "out", "new"):
                mus = uf["mu_" + m][members]
                mu = float(mus.mean())
                var = float(uf["var_" + m][members].mean() + mus.var())
                self.r_norm["mu_" + m][g_idx] = mu
                self.r_norm["sd_" + m][g_idx] = math.sqrt(var + mu + 1.0)
            prof = (
                self.hours[members] / np.maximum(self.hours[members].sum(axis=1, keepdims=True), 1e-9)
            ).sum(axis=0)
            p = (prof + 0.5) / (prof.sum() + 12.0)
            self.r_hour_cost[g_idx] = -np.log(p)
            acts = self.actions[members]
            prof = (acts / np.maximum(acts.sum(axis=1, keepdims=True), 1e-9)).sum(axis=0)
            self.r_action_cost[g_idx] = -np.log((prof + 0.5) / (prof.sum() + 0.5 * len(ACTIONS)))
            e, x = float(uf["expl"][members].sum()), float(uf["unexpl"][members].sum())
            self.r_unexpl_cost[g_idx] = -math.log((x + 1.0) / (e + x + 2.0))
        # each role row missing members falls back to everyone's row
        for g_idx in range(n_roles):
            if len(groups[g_idx]) == 0:
                self.r_hour_cost[g_idx] = self.r_hour_cost[n_roles]
                self.r_action_cost[g_idx] = self.r_action_cost[n_roles]
                self.r_unexpl_cost[g_idx] = self.r_unexpl_cost[n_roles]
                for name in self.r_norm:
                    self.r_norm[name][g_idx] = self.r_norm[name][n_roles]
        if not np.any(has):  # cold start: no norm yet, so no volume is unusual
            for name in self.r_norm:
                if name.startswith("sd_"):
                    self.r_norm[name][:] = np.inf
            self.r_unexpl_cost[:] = 0.0
        rrow = np.where((role >= 0) & (role < n_roles), role, n_roles)
        w = days / (days + k0)
        for m in ("read", "out", "new"):
            mu_r = self.r_norm["mu_" + m][rrow]
            sd_r = self.r_norm["sd_" + m][rrow]
            var_r = sd_r * sd_r - mu_r - 1.0
            mu = w * uf["mu_" + m][:nu] + (1.0 - w) * mu_r
            var = w * uf["var_" + m][:nu] + (1.0 - w) * var_r
            self.t_norm["mu_" + m][:nu] = mu
            self.t_norm["sd_" + m][:nu] = np.sqrt(np.maximum(var, 0.0) + mu + 1.0)
        # hour profile: the user's decayed counts with the role's profile as a prior of weight 5
        rp = np.exp(-self.r_hour_cost[rrow])
        h = self.hours[:nu]
        self.t_hour_cost[:nu] = -np.log((h + 5.0 * rp) / (h.sum(axis=1, keepdims=True) + 5.0))
        # action mix: the same, with the role's mix as the prior
        rp = np.exp(-self.r_action_cost[rrow])
        h = self.actions[:nu]
        self.t_action_cost[:nu] = -np.log((h + 5.0 * rp) / (h.sum(axis=1, keepdims=True) + 5.0))
        # P(unexplained | user) with the role's rate as a prior of weight 20 accesses
        pr = np.exp(-self.r_unexpl_cost[rrow])
        ue, ux = uf["expl"][:nu], uf["unexpl"][:nu]
        self.t_unexpl_cost[:nu] = np.where(
            has, -np.log((ux + 20.0 * pr) / (ue + ux + 20.0)), self.r_unexpl_cost[rrow]
        )
        self.t_users = nu

    # -- snapshot / restore -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain JSON (floats round-trip exactly through ``json``)."""
        nu = len(self.users)
        return {
            "version": STATE_VERSION,
            "late": self.late,
            "rules": self.rules.to_json(),
            "feedback": self.feedback.to_json(),
            "vocab": {
                name: list(getattr(self, name).names)
                for name in (
                    "users",
                    "roles",
                    "depts",
                    "patients",
                    "networks",
                    "addresses",
                    "devices",
                    "agents",
                )
            },
            "day": self.day,
            "last_us": self.last_us,
            "next_incident": self.next_incident,
            "uf": {k: v[:nu].tolist() for k, v in self.uf.items()},
            "ui": {k: v[:nu].tolist() for k, v in self.ui.items()},
            "hours": self.hours[:nu].tolist(),
            "today_hours": self.today_hours[:nu].tolist(),
            "actions": self.actions[:nu].tolist(),
            "today_actions": self.today_actions[:nu].tolist(),
            "prev_out": self.prev_out[:nu].tolist(),
            "dicts": {
                name: [[k, v] for k, v in sorted(getattr(self, name).items())]
                for name in (
                    "pair_seen",
                    "team_explained",
                    "dept_source",
                    "user_net",
                    "net_users",
                    "user_dev",
                    "dev_users",
                    "fail_user",
                    "fail_addr",
                )
            },
            "open": [
                [u, o.incident_id, o.user, o.first_us, o.last_us, o.alerts, o.max_score, o.rules]
                for u, o in sorted(self.open.items())
            ],
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any], *, directory: Directory | None = None) -> OnlineMonitor:
        """A monitor from ``snapshot()`` output; scoring continues exactly where it stopped."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise MonitorStateInvalid("not a monitor state of this version")
        try:
            m = cls(
                directory=directory,
                rules=Rules.from_json(state["rules"]),
                feedback=Feedback.from_json(state["feedback"]),
                late=str(state.get("late", "error")),
            )
            for name, names in state["vocab"].items():
                if name not in _VOCABS:
                    raise ValueError(name)
                setattr(m, name, _Vocab([str(x) for x in names]))
            m.addr_net = np.zeros(0, dtype=np.int64)
            m.agent_dev = np.zeros(0, dtype=np.int64)
            m._derive_families()
            nu = len(m.users)
            cap = max(nu, 1)
            m.uf = {k: np.array(state["uf"][k] + [0.0] * (cap - nu), dtype=np.float64) for k in _USER_F}
            m.ui = {k: np.array(state["ui"][k] + [0] * (cap - nu), dtype=np.int64) for k in _USER_I}
            m.hours = np.array(state["hours"], dtype=np.float64).reshape(nu, 24)
            m.today_hours = np.array(state["today_hours"], dtype=np.int64).reshape(nu, 24)
            m.prev_out = np.array(state["prev_out"], dtype=np.int64).reshape(nu, 6)
            m.actions = np.array(state["actions"], dtype=np.float64).reshape(nu, len(ACTIONS))
            m.today_actions = np.array(state["today_actions"], dtype=np.int64).reshape(nu, len(ACTIONS))
            if nu == 0:
                m.hours, m.today_hours = np.zeros((1, 24)), np.zeros((1, 24), dtype=np.int64)
                m.actions = np.zeros((1, len(ACTIONS)))
                m.today_actions = np.zeros((1, len(ACTIONS)), dtype=np.int64)
                m.prev_out = np.zeros((1, 6), dtype=np.int64)
            for name, items in state["dicts"].items():
                if name.startswith("fail_"):
                    setattr(m, name, {int(k): [int(x) for x in v] for k, v in items})
                else:
                    setattr(m, name, {int(k): int(v) for k, v in items})
            m.open = {
                int(u): _Open(str(i), str(user), int(f), int(la), int(n), float(s), [str(x) for x in rl])
                for u, i, user, f, la, n, s, rl in state["open"]
            }
            m.next_incident = int(state["next_incident"])
            m.last_us = int(state["last_us"])
            m._derive_directory()
            m._ensure_capacity()
            m.day = int(state["day"])
            if m.day >= 0:
                m._recompute_tables()
        except (KeyError, TypeError, ValueError) as exc:
            raise MonitorStateInvalid(f"monitor state is malformed ({type(exc).__name__})") from None
        return m


def _cum_flag(keys: I64, flag: B) -> I64:
    """Running count of ``flag`` per key in order, this element included (exact)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    f = flag[order].astype(np.int64)
    cs = np.cumsum(f)
    start = np.ones(n, dtype=bool)
    start[1:] = sk[1:] != sk[:-1]
    idx = np.arange(n)
    gs = np.maximum.accumulate(np.where(start, idx, 0))
    before = np.where(gs > 0, cs[gs - 1], 0)
    out = np.empty(n, dtype=np.int64)
    out[order] = cs - before
    return out
