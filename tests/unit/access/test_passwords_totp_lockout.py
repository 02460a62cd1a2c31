"""Password policy and hashing, TOTP window and replay, recovery codes, lockout back-off (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medvault.access import passwords as pw
from medvault.access import totp
from medvault.access.lockout import Counter, LockoutPolicy

NOW = datetime(2030, 3, 4, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("short", "at least 12"),
        ("password1234", "common"),  # in the breached list
        ("qwerty123456", "common"),
        ("1qaz2wsx3edc", "common"),
        ("Password123456!", "common"),  # common word + digits/symbols
        ("!!sunshine2024", "common"),
        ("xx-Alice.Smith-2024", "user name"),
        ("aaaaaaaaaaaaaaaa", "different characters"),
        ("x" * 1025, "at most"),
    ],
)
def test_policy_refuses(password: str, rule: str) -> None:
    with pytest.raises(pw.WeakPassword, match=rule):
        pw.check_password(password, username="alice.smith")


@pytest.mark.parametrize(
    "password", ["glacier-violet-teapot-42", "Tr0ub4dor&3-horse", pw.generate_password()]
)
def test_policy_accepts(password: str) -> None:
    pw.check_password(password, username="alice.smith")


def test_short_user_names_do_not_block_everything() -> None:
    pw.check_password("glacier-violet-teapot-42", username="al")


def test_default_hasher_is_argon2id_rfc9106() -> None:
    hasher = pw.default_hasher()
    assert hasher.type.name == "ID" and hasher.memory_cost == 65536 and hasher.time_cost >= 3


def test_hash_and_verify_normalize_unicode() -> None:
    hasher = pw.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    stored = pw.hash_password(hasher, "ﬁle-cabinet-soup")  # "fi" ligature -> NFKC "fi"
    assert stored.startswith("$argon2id$")
    assert pw.verify_password(hasher, stored, "file-cabinet-soup")
    assert not pw.verify_password(hasher, stored, "file-cabinet-soap")
    assert not pw.verify_password(hasher, "not a hash", "x")


# -- TOTP ---------------------------------------------------------------------------------------------


def test_totp_rfc6238_vector() -> None:
    # RFC 6238 Appendix B, SHA-1, T = 59 s: 94287082 (8 digits) -> our 6 digits are its last six.
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32("12345678901234567890")
    assert totp.totp_at(secret, 1) == "287082"


def test_totp_window_and_replay() -> None:
    secret = totp.new_secret()
    step = totp.step_at(NOW)
    for offset in (-1, 0, 1):
        assert (
            totp.verify_totp(secret, totp.totp_at(secret, step + offset), now=NOW, last_step=None)
            == step + offset
        )
    for offset in (-2, 2):
        assert totp.verify_totp(secret, totp.totp_at(secret, step + offset), now=NOW, last_step=None) is None
    code = totp.totp_at(secret, step)
    assert totp.verify_totp(secret, code, now=NOW, last_step=step) is None  # replay
    assert totp.verify_totp(secret, totp.totp_at(secret, step - 1), now=NOW, last_step=step) is None  # older
    assert totp.verify_totp(secret, "12345", now=NOW, last_step=None) is None
    assert totp.verify_totp(secret, "abcdef", now=NOW, last_step=None) is None


def test_enrolment_gives_uri_qr_and_codes() -> None:
    e = totp.enrol("alice", issuer="medvault")
    assert e.uri.startswith("otpauth://totp/medvault:alice?") and f"secret={e.secret}" in e.uri
    assert "issuer=medvault" in e.uri
    assert e.qr_png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "█" in e.qr_text and len(e.qr_text.splitlines()) > 10
    assert len(e.recovery_codes) == totp.RECOVERY_CODES == len(set(e.recovery_codes))
    assert all(totp.looks_like_recovery_code(c) for c in e.recovery_codes)
    assert e.secret not in repr(e)
    assert totp.hash_recovery_code(e.recovery_codes[0]) == totp.hash_recovery_code(
        e.recovery_codes[0].upper()
    )


# -- lockout -----------------------------------------------------------------------------------------


def test_backoff_doubles_and_caps() -> None:
    policy = LockoutPolicy(threshold=5, base=timedelta(minutes=1), cap=timedelta(minutes=30))
    assert [policy.delay(n).total_seconds() for n in range(4, 12)] == [0, 60, 120, 240, 480, 960, 1800, 1800]


def test_locked_for_and_forgetting() -> None:
    policy = LockoutPolicy()
    counter = Counter(5, NOW)
    assert policy.locked_for(counter, NOW) == 60
    assert policy.locked_for(counter, NOW + timedelta(seconds=59)) == 1
    assert policy.locked_for(counter, NOW + timedelta(seconds=60)) == 0
    assert policy.locked_for(Counter(4, NOW), NOW) == 0
    assert policy.after_failure(counter, NOW + timedelta(hours=25)) == Counter(1, NOW + timedelta(hours=25))
    assert policy.after_failure(counter, NOW + timedelta(minutes=2)).failures == 6
