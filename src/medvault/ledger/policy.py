"""Witness policies: which witnesses a verifier trusts and how many must cosign a checkpoint.

A checkpoint signed only by the archive proves nothing against the archive itself: its operator
could show one history to an auditor and another to a patient, or rewrite and re-sign. A checkpoint
cosigned by a quorum of independent witnesses (each of which checked it extends what it saw
before) cannot be forked without that many of them colluding.

The policy file (UTF-8 text, one statement per line, ``#`` starts a comment)::

    log      <log note verifier key>                  # 0x01 key; name = the checkpoint origin
    witness  <cosignature verifier key> [URL]          # 0x04 key (C2SP tlog-cosignature)
    quorum   <k>                                       # at least k of the witnesses above

Several ``log`` lines are allowed (a key rollover); every witness is named once. The archive writes
its own with ``medvault ledger witness-policy``; ``medvault ledger verify --witness-policy FILE``
and the offline verifier of patient receipts read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medvault.errors import InvalidInput, NoteInvalid
from medvault.ledger.cosignature import Cosignature, CosignatureVerifier, cosignatures
from medvault.ledger.note import Checkpoint, Verifier, open_note, parse_checkpoint

__all__ = ["PolicyResult", "WitnessEntry", "WitnessPolicy", "parse_policy"]

MAX_POLICY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WitnessEntry:
    verifier: CosignatureVerifier
    url: str = ""


@dataclass(frozen=True)
class PolicyResult:
    """A checkpoint checked against a policy: its content and who cosigned it."""

    checkpoint: Checkpoint
    cosigned_by: tuple[Cosignature, ...]
    quorum: int

    @property
    def met(self) -> bool:
        return len(self.cosigned_by) >= self.quorum


@dataclass(frozen=True)
class WitnessPolicy:
    logs: tuple[Verifier, ...]
    witnesses: tuple[WitnessEntry, ...]
    quorum: int

    def __post_init__(self) -> None:
        names = [w.verifier.name for w in self.witnesses]
        if len(set(names)) != len(names):
            raise InvalidInput("a witness policy names each witness once")
        if not 0 <= self.quorum <= len(self.witnesses):
            raise InvalidInput(
                f"quorum {self.quorum} is not between 0 and the {len(self.witnesses)} witnesses"
            )

    def check(self, note: bytes, *, origin: str | None = None) -> PolicyResult:
        """Verify the log's signature on ``note`` and count valid cosignatures by our witnesses.

        Raises :class:`NoteInvalid` if no trusted log key signed it, if ``origin`` is given and
        differs, or if a line claiming one of our witnesses is forged.
        """
        problems = []
        for verifier in self.logs:
            try:
                checkpoint = parse_checkpoint(open_note(note, verifier))
            except NoteInvalid as exc:
                problems.append(exc.message)
                continue
            if origin is not None and checkpoint.origin != origin:
                raise NoteInvalid(f"checkpoint is for origin {checkpoint.origin!r}, not {origin!r}")
            found = cosignatures(note, [w.verifier for w in self.witnesses])
            return PolicyResult(checkpoint, tuple(sorted(found, key=lambda c: c.name)), self.quorum)
        raise NoteInvalid("; ".join(problems) or "the policy names no log key")

    def to_text(self) -> str:
        lines = ["# medvault witness policy (docs/witness.md)"]
        lines += [f"log {v.key_text()}" for v in self.logs]
        lines += [f"witness {w.verifier.key_text()}" + (f" {w.url}" if w.url else "") for w in self.witnesses]
        lines.append(f"quorum {self.quorum}")
        return "\n".join(lines) + "\n"


def parse_witness_entry(text: str, where: str) -> WitnessEntry:
    """``<cosignature verifier key> [URL]`` (a policy's witness line, or an archive's setting)."""
    fields = text.split()
    if not 1 <= len(fields) <= 2:
        raise InvalidInput(f"{where}: expected '<witness verifier key> [URL]'")
    try:
        verifier = CosignatureVerifier.from_key_text(fields[0])
    except NoteInvalid as exc:
        raise InvalidInput(f"{where}: {exc.message}") from None
    url = fields[1] if len(fields) == 2 else ""
    if url and not url.startswith(("https://", "http://")):
        raise InvalidInput(f"{where}: the witness URL must start with https://")
    return WitnessEntry(verifier, url.rstrip("/"))


def parse_policy(text: str) -> WitnessPolicy:
    """Parse a policy file; an error names the line."""
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise InvalidInput("a witness policy is at most 1 MiB")
    logs: list[Verifier] = []
    witnesses: list[WitnessEntry] = []
    quorum: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"policy line {number}"
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "log":
            try:
                logs.append(Verifier.from_key_text(rest))
            except NoteInvalid as exc:
                raise InvalidInput(f"{where}: {exc.message}") from None
        elif keyword == "witness":
            witnesses.append(parse_witness_entry(rest, where))
        elif keyword == "quorum":
            if quorum is not None:
                raise InvalidInput(f"{where}: a second quorum line")
            if not rest.isdigit():
                raise InvalidInput(f"{where}: quorum is a number of witnesses")
            quorum = int(rest)
        else:
            raise InvalidInput(f"{where}: unknown statement {keyword[:40]!r} (log, witness, quorum)")
    if not logs:
        raise InvalidInput("the policy has no 'log <key>' line")
    if quorum is None:
        raise InvalidInput("the policy has no 'quorum <k>' line")
    return WitnessPolicy(tuple(logs), tuple(witnesses), quorum)


def majority(witnesses: Sequence[object]) -> int:
    """More than half: the default quorum when a site names witnesses but no quorum."""
    return len(witnesses) // 2 + 1 if witnesses else 0
