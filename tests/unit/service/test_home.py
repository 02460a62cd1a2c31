"""Opening a home from a keyring that is already unlocked (how `serve`'s workers open it)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import PASSPHRASE, make_home

from medvault.crypto.keyring import KeyringFile, reseal_with_rotation
from medvault.home import KEYRING_FILE, open_home


def test_a_home_opened_from_an_unlocked_keyring_uses_keys_rotated_since(tmp_path: Path) -> None:
    """A worker restarted after `keys rotate` inherits the keyring as the supervisor unlocked it;
    it must still wrap new data keys under the newest KEK, as one opened with the passphrase does."""
    home = make_home(tmp_path / "home")
    unlocked = KeyringFile.open(home.root / KEYRING_FILE, PASSPHRASE)
    before = unlocked.keyring.current_kek
    newest = reseal_with_rotation(home.root / KEYRING_FILE, PASSPHRASE)
    assert newest != before

    from_keyring = open_home(home.root, unlocked)
    from_passphrase = open_home(home.root, PASSPHRASE)
    try:
        assert from_keyring.archive.keks.current_kek_id == from_passphrase.archive.keks.current_kek_id
        assert from_keyring.keyring_file.keyring.current_kek == newest
    finally:
        from_keyring.close()
        from_passphrase.close()
