"""Passwords: argon2id hashes and the password policy.

Policy (NIST SP 800-63B 5.1.1.2 style: length and a block list, no composition rules):

* at least :data:`MIN_LENGTH` characters (after NFKC normalization), at most :data:`MAX_LENGTH`;
* not containing the user name (case-insensitive; names of 3+ characters);
* not in the bundled list of breached passwords, and not a common password with only digits or
  punctuation added around it (``Password123456!`` is refused as ``password``).

The list (``data/common-passwords.txt.gz``) is the 30 000-entry password frequency list that the
``zxcvbn`` package (MIT, Dropbox's zxcvbn ported by Daniel Wolf) bundles, ranked by how often each
password appeared in leaked password dumps. See ``data/README.md``.
"""

from __future__ import annotations

import gzip
import secrets
import string
import unicodedata
from functools import cache
from importlib import resources
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from medvault.errors import InvalidInput

__all__ = [
    "MAX_LENGTH",
    "MIN_LENGTH",
    "PasswordHasher",
    "WeakPassword",
    "check_password",
    "default_hasher",
    "generate_password",
    "hash_password",
    "needs_rehash",
    "verify_password",
]

MIN_LENGTH: Final = 12
MAX_LENGTH: Final = 1024  # argon2 takes any length; this only bounds the work an attacker can cause
#: How many of the most frequent passwords also refuse "common word + digits/punctuation".
COMMON_STEMS: Final = 10_000
_STRIP: Final = string.digits + string.punctuation + " "
_LIST: Final = "common-passwords.txt.gz"


class WeakPassword(InvalidInput):
    """The password does not meet the policy; the message says which rule."""


def default_hasher() -> PasswordHasher:
    """argon2id, RFC 9106 "second recommended" profile (t=3, m=64 MiB, p=4): argon2-cffi's default."""
    return PasswordHasher()


def _normalize(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


@cache
def _breached() -> tuple[frozenset[str], frozenset[str]]:
    raw = resources.files("medvault.access").joinpath("data", _LIST).read_bytes()
    ranked = [w for w in gzip.decompress(raw).decode("utf-8").splitlines() if w]
    return frozenset(ranked), frozenset(w for w in ranked[:COMMON_STEMS] if len(w) >= 4)


def check_password(password: str, *, username: str) -> None:
    """Raise :class:`WeakPassword` naming the rule the password breaks; return when it is fine."""
    pw = _normalize(password)
    if len(pw) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")
    if len(pw) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    folded = pw.casefold()
    name = _normalize(username).casefold()
    if len(name) >= 3 and name in folded:
        raise WeakPassword("a password must not contain the user name")
    everything, stems = _breached()
    if folded in everything:
        raise WeakPassword("this password is among the most common / breached passwords; choose another")
    core = folded.strip(_STRIP)
    if core in stems or core.replace(" ", "") in stems:
        raise WeakPassword("this password is a common password with digits or symbols added; choose another")
    if len(set(folded)) < 4:
        raise WeakPassword("a password needs more than three different characters")


def generate_password(length: int = 20) -> str:
    """A random one-time password (letters and digits, ~119 bits for 20 characters)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def hash_password(hasher: PasswordHasher, password: str) -> str:
    return hasher.hash(_normalize(password))


def verify_password(hasher: PasswordHasher, stored_hash: str, password: str) -> bool:
    """True when ``password`` matches; False for a mismatch or a malformed hash (never raises)."""
    try:
        return hasher.verify(stored_hash, _normalize(password)[: MAX_LENGTH + 1])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(hasher: PasswordHasher, stored_hash: str) -> bool:
    try:
        return hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
