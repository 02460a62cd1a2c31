"""``[monitor]`` settings refused before serving when they cannot be what the site meant: rule
overrides, responses per severity, notification channels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medvault.alerting.notify import Notifier
from medvault.alerting.responses import RESPONSES, parse_responses
from medvault.config import MonitorSettings
from medvault.errors import ConfigError
from medvault.monitor import Rules, rules_from


def test_rule_overrides_change_only_what_they_name() -> None:
    rules = rules_from(["alert_score = 7", "failed_login_user_burst=6", "researcher_roles=researcher, ds"])
    assert (rules.alert_score, rules.failed_login_user_burst) == (7.0, 6)
    assert rules.researcher_roles == ("researcher", "ds")
    assert (
        rules.with_(alert_score=6.0, failed_login_user_burst=4, researcher_roles=("researcher",)) == Rules()
    )
    assert rules_from([]) == Rules()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("alert_scor=7", "'alert_scor=7' is not NAME=VALUE of a known setting"),
        ("alert_score", "is not NAME=VALUE"),
        ("=7", "is not NAME=VALUE"),
        ("alert_score=seven", "alert_score must be a number"),
        ("alert_score=", "alert_score must be a number"),
        ("half_life_days=nan", "half_life_days must be a finite number"),
        ("volume_points=NaN", "volume_points must be a finite number"),
        ("failed_login_window_s=inf", "failed_login_window_s must be a finite number"),
        ("failed_login_user_burst=nan", "failed_login_user_burst must be a finite number"),
        ("failed_login_user_burst=4.5", "failed_login_user_burst must be a whole number"),
        ("alert_score=-1", "alert_score must be a non-negative number"),
        ("alert_score=20", "reason_floor <= alert_score <= high_score"),
        ("half_life_days=0", "positive"),
    ],
)
def test_a_rule_override_that_cannot_be_meant_is_a_config_error_naming_it(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match="monitor\\] rules") as caught:
        rules_from([entry])
    assert message in caught.value.message


def test_responses_per_severity() -> None:
    table = parse_responses(["medium=", "high = end_sessions, step_up", f"critical={','.join(RESPONSES)}"])
    assert table == {"medium": (), "high": ("end_sessions", "step_up"), "critical": RESPONSES}
    assert parse_responses(MonitorSettings().responses)["high"] == ("end_sessions", "step_up")
    assert parse_responses(MonitorSettings().responses)["medium"] == ()  # conservative defaults


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["high=end_session"], "unknown response 'end_session' for high"),
        (["high=step-up"], "unknown response 'step-up'"),
        (["High=step_up"], "'High=step_up' must be SEVERITY=RESPONSE"),
        (["urgent=step_up"], "must be SEVERITY=RESPONSE"),
        (["high step_up"], "must be SEVERITY=RESPONSE"),
        (["high=step_up", "high=lock_account"], "high is given twice"),
    ],
)
def test_a_response_typo_is_a_config_error_naming_it(entries: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="monitor\\] responses") as caught:
        parse_responses(entries)
    assert message in caught.value.message
    if "twice" not in message:
        assert "step_up" in caught.value.hint  # the hint lists what exists


def _notifier(tmp_path: Path, **settings: str) -> Notifier:
    return Notifier(dataclasses.replace(MonitorSettings(), **settings), "medvault.test", tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"webhook_url": "http://siem.example/hook", "webhook_secret_env": "HOOK_SECRET"}, "https://"),
        ({"webhook_url": "https://", "webhook_secret_env": "HOOK_SECRET"}, "with a host"),
        ({"webhook_url": "siem.example/hook", "webhook_secret_env": "HOOK_SECRET"}, "https://"),
        ({"webhook_url": "https://siem.example/hook"}, "needs a secret"),
        ({"webhook_url": "https://siem.example/hook", "webhook_secret_env": "HOOK_UNSET"}, "needs a secret"),
        ({"webhook_url": "https://siem.example/hook", "webhook_secret_env": "HOOK_EMPTY"}, "needs a secret"),
        (
            {"webhook_url": "https://s.example", "webhook_secret_env": "HOOK_SECRET", "webhook_ca": "no.crt"},
            "webhook_ca",
        ),
        ({"syslog": "syslog+udp://siem.example:514"}, "unsupported destination scheme"),
        ({"syslog": "syslog+tcp://siem.example"}, "explicit port"),
        ({"syslog": "syslog+tls://siem.example:99999"}, "bad port"),
        ({"syslog": "syslog+tls://siem.example", "syslog_ca": "tls/missing.crt"}, "syslog_ca"),
    ],
)
def test_a_notification_channel_that_cannot_work_is_refused_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret-for-tests")
    monkeypatch.setenv("HOOK_EMPTY", "")
    monkeypatch.delenv("HOOK_UNSET", raising=False)
    with pytest.raises(ConfigError, match="\\[monitor\\]") as caught:
        _notifier(tmp_path, **settings).check()
    assert message in str(caught.value.diagnostics())


def test_channels_that_can_work_pass_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret-for-tests")
    (tmp_path / "siem-ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    _notifier(tmp_path).check()
    assert not _notifier(tmp_path).configured
    ok = _notifier(
        tmp_path,
        webhook_url="https://siem.example:8443/hooks/medvault",
        webhook_secret_env="HOOK_SECRET",
        syslog="syslog+tls://siem.example",
        syslog_ca="siem-ca.crt",
    )
    ok.check()
    assert ok.configured
