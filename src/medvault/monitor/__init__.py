"""Continuous monitoring: insider-threat detection over access events (issue #13), pure core.

Events (:class:`MonitorEvent`, EVENTS.jsonl, or medvault's own ledger events through
:func:`from_ledger`) go through one :class:`OnlineMonitor` (``observe`` / ``observe_batch``,
``snapshot`` / ``restore``), which scores each from earlier events and the :class:`Directory`
only, explains the score (rules, learned baselines, the user-patient relation) and groups alerts
into incidents. :func:`replay` runs that same monitor over a whole log. File I/O lives in
:mod:`medvault.monitor.files`. See docs/monitoring.md.
"""

from medvault.monitor._detector import Incident, OnlineMonitor, ScoredBatch, ScoredEvent
from medvault.monitor._directory import Directory, PatientInfo, UserInfo, parse_directory
from medvault.monitor._events import (
    Action,
    EventBatch,
    MonitorEvent,
    iter_events,
    parse_event_line,
    read_batches,
)
from medvault.monitor._ledger import alert_event, from_ledger, to_ledger
from medvault.monitor._replay import replay
from medvault.monitor._rules import Disposition, Feedback, Rule, Rules, apply_disposition, rules_from

__all__ = [
    "Action",
    "Directory",
    "Disposition",
    "EventBatch",
    "Feedback",
    "Incident",
    "MonitorEvent",
    "OnlineMonitor",
    "PatientInfo",
    "Rule",
    "Rules",
    "ScoredBatch",
    "ScoredEvent",
    "UserInfo",
    "alert_event",
    "apply_disposition",
    "from_ledger",
    "iter_events",
    "parse_directory",
    "parse_event_line",
    "read_batches",
    "replay",
    "rules_from",
    "to_ledger",
]
