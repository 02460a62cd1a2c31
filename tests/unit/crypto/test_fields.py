"""PHI in the index: field encryption, blind indexes, pseudonyms."""

from __future__ import annotations

import re

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.crypto import BlindIndex, FieldCipher, Pseudonymizer
from medvault.errors import IntegrityError, InvalidInput

KEY = bytes(range(32))
OTHER = bytes(range(100, 132))


def hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def hmac16(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()[:16]


# -- FieldCipher ----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(value=st.binary(max_size=500), context=st.binary(max_size=40))
def test_field_round_trip(value: bytes, context: bytes) -> None:
    cipher = FieldCipher(KEY)
    blob = cipher.encrypt(value, context=context)
    assert blob[0] == 1
    assert len(blob) == 1 + 12 + len(value) + 16
    assert cipher.decrypt(blob, context=context) == value


def test_field_encryption_is_randomised() -> None:
    cipher = FieldCipher(KEY)
    assert cipher.encrypt(b"DOE^JOHN", context=b"pn") != cipher.encrypt(b"DOE^JOHN", context=b"pn")


def test_field_key_is_derived_with_hkdf() -> None:
    nonce = bytes(12)
    blob = FieldCipher(KEY)._encrypt_with_nonce(b"DOE^JOHN", context=b"pn", nonce=nonce)
    derived = hkdf(KEY, b"medvault field v1")
    assert blob == b"\x01" + nonce + AESGCM(derived).encrypt(nonce, b"DOE^JOHN", b"\x01pn")
    with pytest.raises(InvalidTag):  # the raw key does not open it
        AESGCM(KEY).decrypt(nonce, blob[13:], b"\x01pn")


def test_field_failures_are_integrity_errors() -> None:
    cipher = FieldCipher(KEY)
    blob = cipher.encrypt(b"19700101", context=b"birth_date")
    with pytest.raises(IntegrityError):
        cipher.decrypt(blob, context=b"patient_name")
    with pytest.raises(IntegrityError):
        FieldCipher(OTHER).decrypt(blob, context=b"birth_date")
    with pytest.raises(IntegrityError):
        cipher.decrypt(b"\x02" + blob[1:], context=b"birth_date")
    with pytest.raises(IntegrityError):
        cipher.decrypt(blob[:-1], context=b"birth_date")
    with pytest.raises(IntegrityError):
        cipher.decrypt(b"", context=b"birth_date")
    flipped = bytearray(blob)
    flipped[20] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt(bytes(flipped), context=b"birth_date")


def test_short_keys_are_refused() -> None:
    for cls in (FieldCipher, BlindIndex, Pseudonymizer):
        with pytest.raises(InvalidInput):
            cls(bytes(16))


# -- BlindIndex -----------------------------------------------------------------------------------


def test_blind_index_is_deterministic_and_16_bytes() -> None:
    index = BlindIndex(KEY)
    token = index.token("PatientName", "doe^john")
    assert len(token) == 16
    assert token == BlindIndex(KEY).token("PatientName", "doe^john")
    assert token != index.token("PatientName", "doe^jane")


def test_blind_index_matches_the_documented_construction() -> None:
    sub = hkdf(KEY, b"medvault blind index v1\x00PatientID")
    assert BlindIndex(KEY).token("PatientID", "12345") == hmac16(sub, b"12345")


def test_blind_index_is_separated_by_field_and_key() -> None:
    index = BlindIndex(KEY)
    tokens = {
        index.token("PatientName", "x"),
        index.token("PatientID", "x"),
        index.token("PatientNam", "ex"),
        BlindIndex(OTHER).token("PatientName", "x"),
    }
    assert len(tokens) == 4


def test_blind_index_does_not_normalise() -> None:
    index = BlindIndex(KEY)
    assert index.token("PatientName", "Doe^John") != index.token("PatientName", "doe^john")
    assert index.token("PatientName", "Doe^John".casefold()) == index.token("PatientName", "doe^john")


def test_blind_index_refuses_odd_field_names() -> None:
    with pytest.raises(InvalidInput):
        BlindIndex(KEY).token("", "x")
    with pytest.raises(InvalidInput):
        BlindIndex(KEY).token("a\x00b", "x")


# -- Pseudonymizer --------------------------------------------------------------------------------


def test_pseudonym_shape_and_determinism() -> None:
    p = Pseudonymizer(KEY)
    name = p.pseudonym("patient", "12345")
    assert re.fullmatch(r"[0-9a-f]{32}", name)
    assert name == Pseudonymizer(KEY).pseudonym("patient", "12345")
    assert name != Pseudonymizer(OTHER).pseudonym("patient", "12345")


def test_pseudonym_is_separated_by_kind_and_from_blind_index() -> None:
    p = Pseudonymizer(KEY)
    assert p.pseudonym("patient", "x") != p.pseudonym("user", "x")
    assert bytes.fromhex(p.pseudonym("patient", "x")) != BlindIndex(KEY).token("patient", "x")
    sub = hkdf(KEY, b"medvault pseudonym v1\x00patient")
    assert p.pseudonym("patient", "x") == hmac16(sub, b"x").hex()


def test_reprs_hide_keys() -> None:
    for obj in (FieldCipher(KEY), BlindIndex(KEY), Pseudonymizer(KEY)):
        assert KEY.hex() not in repr(obj)
        assert "redacted" in repr(obj)
