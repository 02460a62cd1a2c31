"""Keyed, deterministic replacements: UIDs, patient pseudonyms, per-patient date offsets.

Everything is an HMAC-SHA256 under a sub-key derived from the export project's key, so the same
original value gives the same replacement in every file and every run of one project, and an
unrelated one in another project; without the key nothing can be reversed or linked.

* UID: ``2.25.<first 128 bits of HMAC(uid_key, original)>`` (PS3.5 B.2: a UUID-derived UID,
  at most 44 characters);
* patient: ``PatientID`` ``ANON-<16 base32>`` and ``PatientName`` ``ANON^<same>``, both from
  the original PatientID;
* date offset: 1..3652 days into the past, from the original PatientID (Modified Dates).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac

from medvault.errors import InvalidInput

MIN_KEY_BYTES = 16
MAX_SHIFT_DAYS = 3652  # up to ten years into the past


def _subkey(project_key: bytes, purpose: str) -> bytes:
    return hmac.new(project_key, b"medvault/deid/v1/" + purpose.encode(), hashlib.sha256).digest()


class Keys:
    """The per-project derivations; holds sub-keys only, never the project key itself."""

    __slots__ = ("_ae", "_date", "_patient", "_uid", "_uid_cache")

    def __init__(self, project_key: bytes) -> None:
        if not isinstance(project_key, bytes | bytearray) or len(project_key) < MIN_KEY_BYTES:
            raise InvalidInput(f"the export project key must be at least {MIN_KEY_BYTES} bytes")
        key = bytes(project_key)
        self._uid = _subkey(key, "uid")
        self._patient = _subkey(key, "patient")
        self._date = _subkey(key, "date-offset")
        self._ae = _subkey(key, "ae")
        self._uid_cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return "Keys(<redacted>)"

    def uid(self, original: str) -> str:
        cached = self._uid_cache.get(original)
        if cached is None:
            digest = hmac.new(self._uid, original.encode("ascii", "replace"), hashlib.sha256).digest()
            cached = f"2.25.{int.from_bytes(digest[:16], 'big')}"
            if len(self._uid_cache) < 100_000:
                self._uid_cache[original] = cached
        return cached

    def patient_code(self, patient_id: str) -> str:
        digest = hmac.new(self._patient, patient_id.encode("utf-8"), hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode("ascii")  # 16 characters, A-Z 2-7

    def pseudonym_id(self, patient_id: str) -> str:
        return f"ANON-{self.patient_code(patient_id)}"

    def pseudonym_name(self, patient_id: str) -> str:
        return f"ANON^{self.patient_code(patient_id)}"

    def date_offset(self, patient_id: str) -> dt.timedelta:
        digest = hmac.new(self._date, patient_id.encode("utf-8"), hashlib.sha256).digest()
        return dt.timedelta(days=-(1 + int.from_bytes(digest[:8], "big") % MAX_SHIFT_DAYS))

    def ae_title(self, original: str) -> str:
        digest = hmac.new(self._ae, original.strip().encode("utf-8"), hashlib.sha256).digest()
        return "AE" + base64.b32encode(digest[:10]).decode("ascii")[:14]
