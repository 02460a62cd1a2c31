"""The sealed keyring: sealing, files, rotation across processes."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.crypto import (
    DEFAULT_SCRYPT,
    TEST_SCRYPT,
    Keyring,
    KeyringFile,
    ScryptParams,
    load_keyring,
    open_keyring,
    reseal_with_rotation,
    save_keyring,
)
from medvault.errors import InvalidInput, KeyringError, WrongPassphrase

from .conftest import PASSPHRASE

SRC = Path(__file__).resolve().parents[3] / "src"


def test_generate_makes_distinct_32_byte_secrets(keyring: Keyring) -> None:
    secrets = [
        keyring.keks[1],
        keyring.index_key,
        keyring.blind_index_key,
        keyring.pseudonym_key,
        keyring.tls_secret,
    ]
    assert all(len(s) == 32 for s in secrets)
    assert len(set(secrets)) == len(secrets)
    assert keyring.current_kek == 1


def test_generate_with_injected_randomness_is_reproducible() -> None:
    def counter() -> Callable[[int], bytes]:
        state = {"n": 0}

        def randbytes(n: int) -> bytes:
            state["n"] += 1
            return bytes([state["n"]]) * n

        return randbytes

    a = Keyring.generate(randbytes=counter())
    b = Keyring.generate(randbytes=counter())
    assert a == b
    assert a.keks[1] == b"\x01" * 32


def test_repr_masks_secrets(keyring: Keyring) -> None:
    text = repr(keyring)
    for secret in [keyring.keks[1], keyring.index_key, keyring.tls_secret]:
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text
        assert repr(secret) not in text
    assert "redacted" in text


def test_seal_unseal_round_trip(keyring: Keyring) -> None:
    keyring.add_kek()
    sealed = keyring.seal(PASSPHRASE, params=TEST_SCRYPT)
    opened = Keyring.unseal(sealed, PASSPHRASE)
    assert opened == keyring
    assert opened.keks == keyring.keks and opened.current_kek == 2


def test_sealed_file_records_version_params_and_salt(keyring: Keyring) -> None:
    doc = json.loads(keyring.seal(PASSPHRASE, params=TEST_SCRYPT))
    assert doc["format"] == "medvault-keyring" and doc["version"] == 1
    assert doc["kdf"]["name"] == "scrypt"
    assert (doc["kdf"]["n"], doc["kdf"]["r"], doc["kdf"]["p"]) == (2**12, 8, 1)
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 16
    # no secret in the clear
    for secret in [keyring.keks[1], keyring.index_key, keyring.tls_secret]:
        assert base64.b64encode(secret).decode() not in json.dumps(doc)


def test_each_seal_uses_a_new_salt(keyring: Keyring) -> None:
    a = json.loads(keyring.seal(PASSPHRASE, params=TEST_SCRYPT))
    b = json.loads(keyring.seal(PASSPHRASE, params=TEST_SCRYPT))
    assert a["kdf"]["salt"] != b["kdf"]["salt"]


def test_default_params() -> None:
    assert DEFAULT_SCRYPT == ScryptParams(2**17, 8, 1)
    DEFAULT_SCRYPT.check()


def test_wrong_passphrase(keyring: Keyring) -> None:
    sealed = keyring.seal(PASSPHRASE, params=TEST_SCRYPT)
    with pytest.raises(WrongPassphrase) as info:
        Keyring.unseal(sealed, PASSPHRASE + "!")
    assert PASSPHRASE not in info.value.diagnostics()


def test_passphrase_is_nfc_normalised(keyring: Keyring) -> None:
    sealed = keyring.seal("caf\u00e9", params=TEST_SCRYPT)
    assert Keyring.unseal(sealed, "cafe\u0301") == keyring


def test_empty_passphrase_is_refused(keyring: Keyring) -> None:
    with pytest.raises(InvalidInput):
        keyring.seal("", params=TEST_SCRYPT)


def test_tampered_ciphertext_does_not_open(keyring: Keyring) -> None:
    doc = json.loads(keyring.seal(PASSPHRASE, params=TEST_SCRYPT))
    raw = bytearray(base64.b64decode(doc["ciphertext"]))
    raw[0] ^= 1
    doc["ciphertext"] = base64.b64encode(raw).decode()
    with pytest.raises(WrongPassphrase):
        Keyring.unseal(json.dumps(doc).encode(), PASSPHRASE)


def _sealed_doc(keyring: Keyring) -> dict[str, object]:
    doc: dict[str, object] = json.loads(keyring.seal(PASSPHRASE, params=TEST_SCRYPT))
    return doc


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("kdf"),
        lambda d: d.update(format="something-else"),
        lambda d: d.update(version=2),
        lambda d: d.update(cipher="ChaCha20"),
        lambda d: d.update(nonce="!!not base64!!"),
        lambda d: d.update(nonce=base64.b64encode(b"short").decode()),
        lambda d: d.update(ciphertext=17),
        lambda d: d["kdf"].update(name="argon2id"),
        lambda d: d["kdf"].update(n=2**30),  # would need 1 TiB: refused before deriving
        lambda d: d["kdf"].update(n=1000),  # not a power of two
        lambda d: d["kdf"].update(r="8"),
        lambda d: d["kdf"].update(salt=""),
    ],
)
def test_malformed_files_raise_keyring_error(keyring: Keyring, mutate: object) -> None:
    doc = _sealed_doc(keyring)
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(KeyringError) as info:
        Keyring.unseal(json.dumps(doc).encode(), PASSPHRASE)
    assert not isinstance(info.value, WrongPassphrase)


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00\xff", b"[]", b"{}", b"null", b'"x"', b"{" * 100_000, b"x" * 2_000_000]
)
def test_garbage_raises_keyring_error(garbage: bytes) -> None:
    with pytest.raises(KeyringError):
        Keyring.unseal(garbage, PASSPHRASE)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_random_bytes_raise_keyring_error(garbage: bytes) -> None:
    with pytest.raises(KeyringError):
        Keyring.unseal(garbage, PASSPHRASE)


def test_unsupported_version_says_so(keyring: Keyring) -> None:
    doc = _sealed_doc(keyring)
    doc["version"] = 9
    with pytest.raises(KeyringError) as info:
        Keyring.unseal(json.dumps(doc).encode(), PASSPHRASE)
    assert "upgrade" in info.value.diagnostics()


def test_add_kek_keeps_old_keys(keyring: Keyring) -> None:
    first = keyring.keks[1]
    assert keyring.add_kek() == 2
    assert keyring.add_kek() == 3
    assert keyring.current_kek == 3
    assert keyring.keks[1] == first
    assert len(set(keyring.keks.values())) == 3


def test_invalid_keyring_is_refused() -> None:
    with pytest.raises(KeyringError):
        Keyring(
            keks={1: bytes(32)},
            current_kek=2,
            index_key=bytes(32),
            blind_index_key=bytes(32),
            pseudonym_key=bytes(32),
            tls_secret=bytes(32),
        )
    with pytest.raises(KeyringError):
        Keyring(
            keks={1: bytes(16)},
            current_kek=1,
            index_key=bytes(32),
            blind_index_key=bytes(32),
            pseudonym_key=bytes(32),
            tls_secret=bytes(32),
        )


# -- files ----------------------------------------------------------------------------------------


def test_save_and_load(tmp_path: Path, keyring: Keyring, keyring_path: Path) -> None:
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    assert load_keyring(keyring_path, PASSPHRASE) == keyring
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["keyring.json", "keyring.json.lock"]


def test_save_replaces_atomically(keyring: Keyring, keyring_path: Path) -> None:
    keyring.add_kek()
    save_keyring(keyring_path, keyring, "a new passphrase", params=TEST_SCRYPT)
    assert load_keyring(keyring_path, "a new passphrase").current_kek == 2
    with pytest.raises(WrongPassphrase):
        load_keyring(keyring_path, PASSPHRASE)


def test_missing_file_hints_at_init(tmp_path: Path) -> None:
    with pytest.raises(KeyringError) as info:
        load_keyring(tmp_path / "nope.json", PASSPHRASE)
    assert "medvault init" in info.value.diagnostics()


def test_reload_after_another_process_rotates(keyring_path: Path) -> None:
    kr, reload = open_keyring(keyring_path, PASSPHRASE)
    assert kr.current_kek == 1
    code = (
        "import sys; from pathlib import Path; from medvault.crypto import reseal_with_rotation;"
        "print(reseal_with_rotation(Path(sys.argv[1]), sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(keyring_path), PASSPHRASE],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "2"
    new = reload()  # no passphrase needed
    assert new.current_kek == 2
    assert new.keks[1] == kr.keks[1]
    assert new.index_key == kr.index_key


def test_rotation_keeps_salt_and_changes_nonce(keyring_path: Path) -> None:
    before = json.loads(keyring_path.read_bytes())
    assert reseal_with_rotation(keyring_path, PASSPHRASE) == 2
    after = json.loads(keyring_path.read_bytes())
    assert after["kdf"] == before["kdf"]
    assert after["nonce"] != before["nonce"]
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600


def test_concurrent_rotations_lose_no_key(keyring_path: Path) -> None:
    handles = [KeyringFile.open(keyring_path, PASSPHRASE) for _ in range(4)]
    versions: list[int] = []
    threads = [threading.Thread(target=lambda h=h: versions.append(h.rotate())) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(versions) == [2, 3, 4, 5]
    final = load_keyring(keyring_path, PASSPHRASE)
    assert sorted(final.keks) == [1, 2, 3, 4, 5]
    assert final.current_kek == 5


def test_reload_after_passphrase_change_asks_for_restart(keyring: Keyring, keyring_path: Path) -> None:
    handle = KeyringFile.open(keyring_path, PASSPHRASE)
    save_keyring(keyring_path, keyring, "another passphrase", params=TEST_SCRYPT)
    with pytest.raises(KeyringError) as info:
        handle.reload()
    assert "Restart" in info.value.diagnostics()


def test_keyring_file_repr_has_no_secret(keyring: Keyring, keyring_path: Path) -> None:
    handle = KeyringFile.open(keyring_path, PASSPHRASE)
    text = repr(handle)
    assert keyring.keks[1].hex() not in text
    assert repr(handle._key) not in text


def test_unwritable_location_is_a_keyring_error(tmp_path: Path, keyring: Keyring) -> None:
    with pytest.raises(KeyringError):
        save_keyring(
            tmp_path / "no" / "such" / "dir" / "keyring.json", keyring, PASSPHRASE, params=TEST_SCRYPT
        )
