"""The public surface of medvault.crypto is what we meant it to be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import medvault.crypto

SRC = Path(__file__).resolve().parents[3] / "src"

EXPECTED = {
    "DEFAULT_SCRYPT",
    "HEADER_SIZE",
    "SEGMENT_SIZE_DEFAULT",
    "TEST_SCRYPT",
    "BlindIndex",
    "EnvelopeHeader",
    "FieldCipher",
    "KekProvider",
    "Keyring",
    "KeyringFile",
    "KeyringKekProvider",
    "Pseudonymizer",
    "ScryptParams",
    "WrappedKey",
    "ciphertext_length",
    "client_ssl_context",
    "create_ca",
    "decrypt_object",
    "decrypt_range",
    "default_hostnames",
    "encrypt_object",
    "encrypt_private_key",
    "issue_client_certificate",
    "issue_server_certificate",
    "load_keyring",
    "load_private_key_pem",
    "new_data_key",
    "open_keyring",
    "parse_header",
    "reseal_with_rotation",
    "rewrap",
    "save_keyring",
    "server_ssl_context",
}


def test_public_names() -> None:
    assert set(medvault.crypto.__all__) == EXPECTED
    assert len(medvault.crypto.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert getattr(medvault.crypto, name) is not None


def test_importing_crypto_pulls_in_only_stdlib_and_cryptography() -> None:
    code = (
        "import sys, medvault.crypto; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'sqlalchemy', 'pydicom', 'pynetdicom', 'numpy', 'typer', 'httpx'}))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
