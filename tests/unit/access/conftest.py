"""Fixtures for the access tests: a real SQLite index file (WAL, the production pragmas), a
field cipher, and a cheap argon2id hasher (the production parameters are tested separately)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher

from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.index.store import Index
from medvault.index.users import UserStore

NOW = datetime(2030, 3, 4, 10, 0, 0, tzinfo=UTC)
TRAINED = date(2031, 1, 1)


class SpyHasher(PasswordHasher):
    """A cheap argon2id hasher that remembers which hashes it verified."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(os.urandom(32))


@pytest.fixture
def index(tmp_path: Path, cipher: FieldCipher) -> Iterator[Index]:
    idx = Index.open_sqlite(tmp_path / "index.sqlite", cipher=cipher, blind=BlindIndex(os.urandom(32)))
    yield idx
    idx.close()


@pytest.fixture
def hasher() -> SpyHasher:
    return SpyHasher()


@pytest.fixture
def store(index: Index, cipher: FieldCipher, hasher: SpyHasher) -> UserStore:
    return UserStore(index.engine, cipher=cipher, hasher=hasher)
