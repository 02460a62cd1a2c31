"""docs/encryption-format.md: its stand-alone recipe decrypts a freshly made object."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from medvault.crypto import (
    TEST_SCRYPT,
    Keyring,
    KeyringKekProvider,
    encrypt_object,
    load_keyring,
    new_data_key,
    reseal_with_rotation,
    save_keyring,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "encryption-format.md"
PASSPHRASE = "pässphrase with ünïcode and spaces"


def recipe() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## 4. Stand-alone decryption recipe", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the recipe's python block is missing"
    return match.group(1)


def run_recipe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    script = tmp_path / "decrypt.py"
    script.write_text(recipe(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no medvault on the path
    return subprocess.run(
        [sys.executable, "-I", str(script), *args], capture_output=True, env=env, timeout=120, check=False
    )


def test_recipe_uses_only_cryptography() -> None:
    imports = set(re.findall(r"^(?:from|import) ([\w.]+)", recipe(), re.MULTILINE))
    assert {i.split(".")[0] for i in imports} <= {
        "base64",
        "json",
        "struct",
        "sys",
        "unicodedata",
        "cryptography",
    }


def test_recipe_decrypts_a_fresh_object(tmp_path: Path) -> None:
    keyring_file = tmp_path / "keyring.json"
    save_keyring(keyring_file, Keyring.generate(), PASSPHRASE, params=TEST_SCRYPT)
    reseal_with_rotation(keyring_file, PASSPHRASE)  # the object is wrapped under KEK 2
    keyring = load_keyring(keyring_file, PASSPHRASE)

    plaintext = os.urandom(3 * 1000 + 17)
    object_id = b"1.2.826.0.1.3680043.8.498.12345"
    data_key = new_data_key()
    wrapped = KeyringKekProvider(keyring).wrap(data_key, context=object_id)
    assert wrapped.kek_id == "local-2"
    (tmp_path / "object.bin").write_bytes(
        encrypt_object(plaintext, data_key, object_id=object_id, segment_size=1000)
    )
    (tmp_path / "passphrase.txt").write_text(PASSPHRASE + "\n", encoding="utf-8")

    args = [
        str(tmp_path / "passphrase.txt"),
        str(keyring_file),
        wrapped.kek_id,
        wrapped.blob.hex(),
        object_id.hex(),
        str(tmp_path / "object.bin"),
        object_id.hex(),
    ]
    done = run_recipe(tmp_path, *args)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == plaintext

    args[-1] = b"another object".hex()
    failed = run_recipe(tmp_path, *args)
    assert failed.returncode != 0
    assert b"InvalidTag" in failed.stderr
