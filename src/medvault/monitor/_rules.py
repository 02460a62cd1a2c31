"""The rules an officer reads and tunes, and how dispositions feed back into them.

Every rule adds *points* to an event's score; the score is the sum, so each alert says exactly
which rules gave how much. :class:`Rules` holds every threshold and weight with its default
(docs/monitoring.md lists them). :class:`Feedback` is what resolved alerts taught the monitor:
a false positive or a benign explanation lowers the weight of the rules behind it, for that user
(strongly) and site-wide (mildly); a true positive restores them. Pure functions of their input.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from medvault.errors import ConfigError, MedvaultError, MonitorStateInvalid

__all__ = ["Disposition", "Feedback", "Rule", "Rules", "apply_disposition"]


class Rule(enum.StrEnum):
    """The rules, in scoring order (the order of their points in the sum and in reasons)."""

    FAILED_LOGIN_USER = "failed_login_user"
    FAILED_LOGIN_ADDRESS = "failed_login_address"
    OUTSIDE_SHIFT = "outside_shift"
    UNUSUAL_HOUR = "unusual_hour"
    RARE_ACTION = "rare_action"
    VOLUME_READ = "volume_read"
    VOLUME_OUT = "volume_out"
    VOLUME_WEEK = "volume_week"
    NEW_NETWORK = "new_network"
    NEW_DEVICE = "new_device"
    UNEXPLAINED_ACCESS = "unexplained_access"
    NEW_PATIENTS = "new_patients"
    RESEARCHER_IDENTIFIED = "researcher_identified"
    BREAK_GLASS = "break_glass"
    VIP = "vip"


RULES: tuple[Rule, ...] = tuple(Rule)


@dataclass(frozen=True, kw_only=True)
class Rules:
    """Thresholds (counts, hours, z-scores) and weights (points). Defaults tuned on a synthetic
    160-user site (bench/monitor_generate.py, seed 1); see docs/monitoring.md for each."""

    # operating point: score (sum of points) at which an event alerts, and severities
    alert_score: float = 6.0
    high_score: float = 9.0
    critical_score: float = 14.0
    reason_floor: float = 1.0  # events scoring at least this carry reasons even without an alert
    # failed sign-ins within a sliding window, per user and per source address
    failed_login_window_s: int = 600
    failed_login_user_burst: int = 4
    failed_login_address_burst: int = 8
    failed_login_points: float = 2.0  # per failure beyond the burst size
    failed_login_cap: float = 10.0
    # time of day
    shift_grace_hours: int = 1  # overtime: this close to a shift's edges is still in shift
    outside_shift_points: float = 1.5
    unusual_hour_surprise: float = 3.5  # -ln P(hour | user's history) above which points start
    unusual_hour_points: float = 1.0  # per nat beyond
    unusual_hour_cap: float = 3.0
    rare_action_surprise: float = 3.5  # -ln P(action | user's history) above which points start
    rare_action_points: float = 1.0
    rare_action_cap: float = 2.0
    # volumes against the user's norm blended with the role's (z = (x - mean) / sqrt(var + mean + 1))
    volume_z: float = 3.0
    volume_points: float = 1.0  # per unit of z beyond volume_z
    volume_cap: float = 9.0
    week_z: float = 3.0  # downloads + exports over 7 days against 7 x the daily norm
    week_points: float = 1.0
    week_cap: float = 9.0
    # networks (IPv4 /24, IPv6 /64) and devices (user agent without version numbers)
    new_network_points: float = 3.0
    known_network_points: float = 0.5  # new for this user, but used by site_min_users others
    new_device_points: float = 2.0
    site_min_users: int = 3
    fresh_hours: int = 12  # a network/device first seen this recently still counts as new
    remote_factor: float = 0.5  # users the directory marks remote
    min_history_days: int = 3  # new network/device only once the user has this many active days
    # the user-patient relation
    relation_days: int = 30  # a study stored/reported for a patient in a dept explains access this long
    unexplained_points: float = 1.5  # per nat of surprise -ln P(unexplained | user, role)
    unexplained_offset: float = 0.5  # nats of surprise that earn nothing
    unexplained_cap: float = 6.0
    unexplained_out_factor: float = 1.5  # unexplained downloads/exports: data leaving
    new_patients_z: float = 3.0  # distinct unexplained patients today against the user's norm
    new_patients_points: float = 1.0
    new_patients_cap: float = 8.0
    # privileges
    researcher_roles: tuple[str, ...] = ("researcher",)
    researcher_identified_points: float = 7.0
    break_glass_points: float = 4.0
    vip_points: float = 1.5
    vip_unexplained_points: float = 4.0
    # learning
    half_life_days: float = 14.0  # baselines forget half their weight in this many active days
    prior_days: float = 3.0  # a user's norm is blended with the role's as if the role had this many days
    memory_days: int = 365  # relations older than this are forgotten (bounded memory)
    # incidents: alerts of one user this close together are one incident
    incident_gap_hours: float = 24.0
    # feedback
    fp_user_factor: float = 0.5  # a false positive halves the rule's weight for that user
    fp_site_factor: float = 0.9
    benign_user_factor: float = 0.7
    min_factor: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "researcher_roles":
                if not isinstance(value, tuple) or not all(isinstance(r, str) for r in value):
                    raise MonitorStateInvalid("rules.researcher_roles must be a list of role names")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise MonitorStateInvalid(f"rules.{f.name} must be a non-negative number")
        if not self.reason_floor <= self.alert_score <= self.high_score <= self.critical_score:
            raise MonitorStateInvalid(
                "rules: need reason_floor <= alert_score <= high_score <= critical_score"
            )
        if self.failed_login_window_s < 1 or self.half_life_days <= 0 or self.relation_days < 1:
            raise MonitorStateInvalid("rules: windows and half-lives must be positive")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["researcher_roles"] = list(self.researcher_roles)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Rules:
        """Rules from a mapping (e.g. medvault.toml's ``[monitor.rules]``); unknown keys refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MonitorStateInvalid(f"unknown monitor rule setting {unknown[0]!r}")
        values = dict(raw)
        if "researcher_roles" in values:
            roles = values["researcher_roles"]
            if not isinstance(roles, list | tuple):
                raise MonitorStateInvalid("rules.researcher_roles must be a list of role names")
            values["researcher_roles"] = tuple(roles)
        return cls(**values)

    def with_(self, **changes: Any) -> Rules:
        return replace(self, **changes)


class Disposition(enum.StrEnum):
    TRUE_POSITIVE = "true_positive"
    FALSE_POSITIVE = "false_positive"
    BENIGN_EXPLAINED = "benign_explained"


@dataclass(frozen=True, kw_only=True)
class Feedback:
    """Weights learned from dispositions: per (user, rule) and per rule site-wide (1.0 = as set),
    and (user, patient) pairs an officer marked as explained (benign: e.g. an undocumented consult)."""

    user_rule: Mapping[tuple[str, str], float] = field(default_factory=dict)
    site_rule: Mapping[str, float] = field(default_factory=dict)
    explained_pairs: frozenset[tuple[str, str]] = frozenset()

    def factor(self, user: str, rule: Rule) -> float:
        return self.user_rule.get((user, rule.value), 1.0) * self.site_rule.get(rule.value, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "user_rule": [[u, r, f] for (u, r), f in sorted(self.user_rule.items())],
            "site_rule": dict(sorted(self.site_rule.items())),
            "explained_pairs": sorted([u, p] for u, p in self.explained_pairs),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Feedback:
        try:
            return cls(
                user_rule={(str(u), str(Rule(r))): float(f) for u, r, f in raw.get("user_rule", [])},
                site_rule={str(Rule(r)): float(f) for r, f in raw.get("site_rule", {}).items()},
                explained_pairs=frozenset((str(u), str(p)) for u, p in raw.get("explained_pairs", [])),
            )
        except (TypeError, ValueError):
            raise MonitorStateInvalid("monitor feedback state is malformed") from None


def apply_disposition(
    feedback: Feedback,
    rules: Rules,
    *,
    user: str,
    fired: Mapping[str, float],
    disposition: Disposition,
    patient_id: str | None = None,
) -> Feedback:
    """The feedback after an officer resolved an alert of ``user`` whose rules ``fired`` (rule ->
    points). False positive: each rule that gave points is weighted ``fp_user_factor`` for this
    user and ``fp_site_factor`` site-wide (never below ``min_factor``). Benign-explained: the user's
    weight drops by ``benign_user_factor`` and the (user, patient) pair counts as explained from
    now on. True positive: the user's weights for those rules go back to at least 1."""
    disposition = Disposition(disposition)
    user_rule = dict(feedback.user_rule)
    site_rule = dict(feedback.site_rule)
    pairs = set(feedback.explained_pairs)
    for name, points in fired.items():
        rule = Rule(name).value
        if points <= 0:
            continue
        key = (user, rule)
        current = user_rule.get(key, 1.0)
        if disposition is Disposition.TRUE_POSITIVE:
            user_rule[key] = max(current, 1.0)
            site_rule[rule] = max(site_rule.get(rule, 1.0), 1.0)
        elif disposition is Disposition.FALSE_POSITIVE:
            user_rule[key] = max(rules.min_factor, current * rules.fp_user_factor)
            site_rule[rule] = max(rules.min_factor, site_rule.get(rule, 1.0) * rules.fp_site_factor)
        else:
            user_rule[key] = max(rules.min_factor, current * rules.benign_user_factor)
    if disposition is Disposition.BENIGN_EXPLAINED and patient_id is not None:
        pairs.add((user, patient_id))
    return Feedback(
        user_rule={k: v for k, v in user_rule.items() if v != 1.0},
        site_rule={k: v for k, v in site_rule.items() if v != 1.0},
        explained_pairs=frozenset(pairs),
    )


def rules_from(entries: Sequence[str]) -> Rules:
    """``[monitor] rules``: "name=value" overrides of the detection settings (docs/monitoring.md)."""
    defaults = Rules().to_json()
    changes: dict[str, Any] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            raise ConfigError(
                f"[monitor] rules: {entry!r} is not NAME=VALUE of a known setting",
                hint="The settings and their defaults are listed in docs/monitoring.md.",
            )
        if isinstance(defaults[name], list):  # researcher_roles=researcher,data-scientist
            changes[name] = [r.strip() for r in value.split(",") if r.strip()]
            continue
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"[monitor] rules: {name} must be a number") from None
        if not math.isfinite(number):  # a NaN weight or half-life silently ends every alert
            raise ConfigError(f"[monitor] rules: {name} must be a finite number")
        if isinstance(defaults[name], int):
            if not number.is_integer():
                raise ConfigError(f"[monitor] rules: {name} must be a whole number")
            changes[name] = int(number)
        else:
            changes[name] = number
    try:
        return Rules.from_json({**defaults, **changes})
    except MedvaultError as exc:
        raise ConfigError(f"[monitor] rules: {exc.message.removeprefix('rules: ')}") from None
