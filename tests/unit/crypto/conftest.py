"""Shared fixtures for the crypto tests (cheap scrypt parameters, keyrings on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvault.crypto import TEST_SCRYPT, Keyring, save_keyring

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def keyring_path(tmp_path: Path, keyring: Keyring) -> Path:
    path = tmp_path / "keyring.json"
    save_keyring(path, keyring, PASSPHRASE, params=TEST_SCRYPT)
    return path
