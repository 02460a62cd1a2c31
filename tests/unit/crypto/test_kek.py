"""KEK providers: wrapping data keys, context binding, rotation and reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.crypto import (
    KekProvider,
    Keyring,
    KeyringFile,
    KeyringKekProvider,
    WrappedKey,
    new_data_key,
    open_keyring,
    rewrap,
)
from medvault.errors import IntegrityError, InvalidInput, KeyringError

from .conftest import PASSPHRASE

CONTEXT = b"objects/1.2.3.4"


def test_new_data_key() -> None:
    keys = {new_data_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(k) == 32 for k in keys)


def test_is_a_kek_provider(keyring: Keyring) -> None:
    provider: KekProvider = KeyringKekProvider(keyring)
    assert isinstance(provider, KekProvider)
    assert provider.current_kek_id == "local-1"
    assert provider.kek_ids() == ["local-1"]


def test_wrap_unwrap_round_trip(keyring: Keyring) -> None:
    provider = KeyringKekProvider(keyring)
    dk = new_data_key()
    wrapped = provider.wrap(dk, context=CONTEXT)
    assert wrapped.kek_id == "local-1"
    assert len(wrapped.blob) == 12 + 32 + 16
    assert dk not in wrapped.blob
    assert provider.unwrap(wrapped, context=CONTEXT) == dk
    assert provider.wrap(dk, context=CONTEXT) != wrapped  # random nonce


def test_matches_the_documented_wrapping(keyring: Keyring) -> None:
    provider = KeyringKekProvider(keyring)
    dk, nonce = bytes(range(32)), bytes(12)
    wrapped = provider._wrap_with_nonce(dk, context=CONTEXT, nonce=nonce)
    expected = nonce + AESGCM(keyring.keks[1]).encrypt(nonce, dk, b"local-1\x00" + CONTEXT)
    assert wrapped == WrappedKey("local-1", expected)


def test_context_binds_the_wrapped_key(keyring: Keyring) -> None:
    provider = KeyringKekProvider(keyring)
    wrapped = provider.wrap(new_data_key(), context=CONTEXT)
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, context=b"objects/1.2.3.5")
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, context=b"")


@pytest.mark.parametrize("cut", [0, 1, 12, 59])
def test_damaged_blob_is_an_integrity_error(keyring: Keyring, cut: int) -> None:
    provider = KeyringKekProvider(keyring)
    wrapped = provider.wrap(new_data_key(), context=CONTEXT)
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey(wrapped.kek_id, wrapped.blob[:cut]), context=CONTEXT)
    flipped = bytearray(wrapped.blob)
    flipped[min(cut, 59)] ^= 0x80
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey(wrapped.kek_id, bytes(flipped)), context=CONTEXT)


def test_kek_id_is_bound_too(keyring: Keyring) -> None:
    keyring.add_kek()
    keyring.keks[2] = keyring.keks[1]  # even under the same key bytes, the id is authenticated
    provider = KeyringKekProvider(keyring)
    wrapped = provider.wrap(new_data_key(), context=CONTEXT)
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey("local-1", wrapped.blob), context=CONTEXT)


@pytest.mark.parametrize("kek_id", ["local-9", "vault-1", "local-01", "local-", "", "local-1\x00"])
def test_unknown_kek_id_is_a_keyring_error(keyring: Keyring, kek_id: str) -> None:
    provider = KeyringKekProvider(keyring)
    blob = provider.wrap(new_data_key(), context=CONTEXT).blob
    with pytest.raises(KeyringError):
        provider.unwrap(WrappedKey(kek_id, blob), context=CONTEXT)


def test_wrap_refuses_a_short_key(keyring: Keyring) -> None:
    with pytest.raises(InvalidInput):
        KeyringKekProvider(keyring).wrap(bytes(16), context=CONTEXT)


def test_rotation_wraps_with_new_and_unwraps_old(keyring: Keyring) -> None:
    provider = KeyringKekProvider(keyring)
    dk = new_data_key()
    old = provider.wrap(dk, context=CONTEXT)
    keyring.add_kek()
    new = provider.wrap(dk, context=CONTEXT)
    assert (old.kek_id, new.kek_id) == ("local-1", "local-2")
    assert provider.unwrap(old, context=CONTEXT) == provider.unwrap(new, context=CONTEXT) == dk
    assert provider.kek_ids() == ["local-1", "local-2"]
    moved = rewrap(provider, old, context=CONTEXT)
    assert moved.kek_id == "local-2"
    assert provider.unwrap(moved, context=CONTEXT) == dk
    assert rewrap(provider, moved, context=CONTEXT) is moved


def test_unknown_kek_id_triggers_one_reload(keyring_path: Path) -> None:
    keyring, reload = open_keyring(keyring_path, PASSPHRASE)
    calls: list[int] = []

    def counting_reload() -> Keyring:
        calls.append(1)
        return reload()

    ours = KeyringKekProvider(keyring, reload=counting_reload)
    # another process rotates and wraps a key under the new KEK
    other = KeyringFile.open(keyring_path, PASSPHRASE)
    assert other.rotate() == 2
    dk = new_data_key()
    wrapped = KeyringKekProvider(other.keyring).wrap(dk, context=CONTEXT)
    assert wrapped.kek_id == "local-2"

    assert ours.current_kek_id == "local-1"
    assert ours.unwrap(wrapped, context=CONTEXT) == dk
    assert calls == [1]
    assert ours.current_kek_id == "local-2"  # the swap also moved wrapping to the new KEK
    assert ours.unwrap(wrapped, context=CONTEXT) == dk
    assert calls == [1]  # known now: no second reload
    with pytest.raises(KeyringError):
        ours.unwrap(WrappedKey("local-7", wrapped.blob), context=CONTEXT)
    assert calls == [1, 1]


def test_refresh_picks_up_a_new_current_kek(keyring_path: Path) -> None:
    keyring, reload = open_keyring(keyring_path, PASSPHRASE)
    provider = KeyringKekProvider(keyring, reload=reload)
    KeyringFile.open(keyring_path, PASSPHRASE).rotate()
    assert provider.refresh() is True
    assert provider.current_kek_id == "local-2"
    assert KeyringKekProvider(keyring).refresh() is False


def test_repr_hides_the_blob(keyring: Keyring) -> None:
    provider = KeyringKekProvider(keyring)
    wrapped = provider.wrap(new_data_key(), context=CONTEXT)
    assert wrapped.blob.hex() not in repr(wrapped)
    assert keyring.keks[1].hex() not in repr(provider)
