"""Fixtures for the dicom package tests: pydicom's bundled test files (never downloaded) and a
builder for small synthetic Part 10 instances (see dicom_testkit.py)."""

from __future__ import annotations

import pytest
from dicom_testkit import Builder, FileLoader, fixed_loader, loader, make_dataset


@pytest.fixture
def testfile() -> FileLoader:
    """Bytes of a bundled pydicom test file (skips when it is not bundled)."""
    return loader


@pytest.fixture
def fixed_testfile() -> FileLoader:
    """A bundled test file with its file meta made consistent (MediaStorage* = SOP*)."""
    return fixed_loader


@pytest.fixture
def build() -> Builder:
    return make_dataset
