"""The one error root of medvault, and the one table mapping errors to protocol statuses.

Every error a user can cause or meet derives from :class:`MedvaultError`. The CLI catches only
this root and prints :meth:`MedvaultError.diagnostics`; the web layer maps it to an HTTP status and
the DICOM FailureReason (PS3.18 / PS3.4 status codes) named on the class. Messages never carry PHI:
they name attributes, UIDs and sizes, never patient values.

    MedvaultError
    ├── InvalidInput            400  0xC000  bad request / cannot understand
    │   ├── NotDicom            400  0xC000
    │   ├── MissingAttribute    400  0xA900  (data set does not match SOP class)
    │   ├── StudyMismatch       409  0xA900  (instance belongs to another study)
    │   └── UnsupportedMedia    415  0xC000
    ├── TooLarge                413  0xA700  (out of resources)
    ├── Conflict                409  0x0111  (duplicate SOP instance with different content)
    ├── NotFound                404
    ├── NotAcceptable           406  (no representation the client accepts)
    ├── Unauthenticated         401
    ├── Forbidden               403  0x0124  (refused: not authorized)
    ├── IntegrityError          500  0x0110  (stored bytes failed verification; never served)
    ├── KeyringError            —    the keyring cannot be opened
    │   └── WrongPassphrase
    ├── ConfigError             —    the home folder or config is not usable
    └── StorageError            500  0x0110
        └── StorageUnavailable  503  0xA700  (object store unreachable: retry later)
"""

from __future__ import annotations


class MedvaultError(Exception):
    """Root of every medvault error. ``str(e)`` is safe to show and log: it never holds PHI."""

    http_status: int = 500
    failure_reason: int = 0x0110  # DICOM "Processing failure"
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def diagnostics(self) -> str:
        """A text for a person: what went wrong and, when known, what to do about it."""
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class InvalidInput(MedvaultError):
    http_status = 400
    failure_reason = 0xC000  # Error: cannot understand


class NotDicom(InvalidInput):
    pass


class MissingAttribute(InvalidInput):
    failure_reason = 0xA900  # Error: data set does not match SOP class


class CommandMismatch(InvalidInput):
    """A C-STORE data set whose SOP Class or Instance UID is not the one its command names."""

    failure_reason = 0xA900


class StudyMismatch(InvalidInput):
    http_status = 409
    failure_reason = 0xA900


class UnsupportedMedia(InvalidInput):
    http_status = 415


class TooLarge(MedvaultError):
    http_status = 413
    failure_reason = 0xA700  # Refused: out of resources


class Conflict(MedvaultError):
    http_status = 409
    failure_reason = 0x0111  # Duplicate SOP Instance


class NotFound(MedvaultError):
    http_status = 404


class NotAcceptable(MedvaultError):
    http_status = 406


class Unauthenticated(MedvaultError):
    http_status = 401


class Forbidden(MedvaultError):
    http_status = 403
    failure_reason = 0x0124  # Refused: Not authorized (PS3.7 C.5.x)


class IntegrityError(MedvaultError):
    """Stored bytes failed authentication or their recorded SHA-256: they are never served."""

    http_status = 500
    failure_reason = 0x0110


class KeyringError(MedvaultError):
    pass


class WrongPassphrase(KeyringError):
    def __init__(self) -> None:
        super().__init__(
            "the passphrase does not open this keyring",
            hint="Check MEDVAULT_PASSPHRASE (or the passphrase file) for this home folder.",
        )


class ConfigError(MedvaultError):
    pass


class StorageError(MedvaultError):
    pass


class StorageUnavailable(StorageError):
    """The object store cannot be reached or is failing (S3 down, a network cut): transient, so
    HTTP 503 and DIMSE "out of resources" (the sender retries); nothing was acknowledged."""

    http_status = 503
    failure_reason = 0xA700
    hint = "The object store is unreachable; the archive recovers by itself when it is back."


# --- ledger (medvault.ledger) -------------------------------------------------------------------
#
#   MedvaultError
#   └── LedgerError          500  the ledger cannot do what was asked (no signer, bad origin, …)
#       ├── ProofInvalid     422  an inclusion/consistency proof does not verify
#       ├── NoteInvalid      422  a signed note / checkpoint is malformed or not signed by the key
#       ├── LedgerTampered   500  stored entries disagree with the tree or with signed checkpoints
#       └── WitnessRefused   4xx  a witness would not cosign a checkpoint (tlog-witness codes)


class LedgerError(MedvaultError):
    pass


class ProofInvalid(LedgerError):
    http_status = 422


class NoteInvalid(LedgerError):
    http_status = 422


class LedgerTampered(LedgerError):
    pass


class WitnessRefused(LedgerError):
    """A witness would not cosign (C2SP tlog-witness status codes: 400 malformed, 403 no trusted
    signature, 404 unknown log, 409 conflict with what it cosigned, 422 consistency proof bad).
    ``latest_size`` is the size it last cosigned, sent with a 409 for an old-size mismatch."""

    def __init__(self, status: int, message: str, *, latest_size: int | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.latest_size = latest_size


# --- monitor (medvault.monitor) ------------------------------------------------------------------
#
#   MedvaultError
#   └── InvalidInput
#       ├── EventInvalid       400  an access event (a JSONL line) is malformed; names the line
#       │   ├── UnknownAction  400  the action is not in the monitor's vocabulary
#       │   └── EventOutOfOrder 400 the event is earlier than the one before it
#       ├── DirectoryInvalid   400  the directory (users, patients, shifts) is malformed; names the field
#       └── MonitorStateInvalid 400 a saved monitor state cannot be restored
#   └── MonitorReaderFailed    500  the process reading EVENTS.jsonl for a replay died


class EventInvalid(InvalidInput):
    """An access event the monitor cannot read. ``line`` is the 1-based JSONL line, when known."""

    def __init__(self, message: str, *, line: int | None = None, hint: str | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message, hint=hint)


class UnknownAction(EventInvalid):
    pass


class EventOutOfOrder(EventInvalid):
    pass


class DirectoryInvalid(InvalidInput):
    pass


class MonitorStateInvalid(InvalidInput):
    pass


class MonitorReaderFailed(MedvaultError):
    hint = "Run the replay again; if it fails the same way, check the machine's memory (dmesg)."
