"""Patient receipts (docs/witness.md, "Patient receipts"): the disclosure report of a patient with,
for each access, its ledger entry and inclusion proof to a checkpoint the witnesses cosigned —
verifiable offline by ``medvault-receipt-verify`` with nothing but the witness policy.

The receipt holds no name and no patient ID: the ledger entries name the patient by keyed
pseudonym. Issuing one is ledgered (``patient.receipt``) with the request's reference.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from medvault.archive import Archive
from medvault.compliance.access import request_reference
from medvault.errors import NotFound
from medvault.index.store import TAG_PATIENT_ID
from medvault.ledger.events import Actor, AuditEvent, EventKind, Outcome
from medvault.ledger.note import parse_checkpoint, split_note
from medvault.ledger.receipt import ReceiptEntry, build_receipt
from medvault.ledger.store import Ledger
from medvault.reports import disclosures

__all__ = ["Receipt", "patient_receipt", "receipt_html"]


@dataclass(frozen=True)
class Receipt:
    document: dict[str, Any]
    witnessed: int  # accesses with a proof
    pending: int  # accesses after the checkpoint

    def json_bytes(self) -> bytes:
        return json.dumps(self.document, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def patient_receipt(
    archive: Archive, ledger: Ledger, patient_id: str, *, checkpoint: bytes, actor: Actor, reference: str
) -> Receipt:
    """The receipt of ``patient_id`` against ``checkpoint`` (the newest one a quorum cosigned)."""
    reference = request_reference(reference)
    rows = disclosures(archive, patient_id)
    if not rows:
        raise NotFound("the ledger records no disclosure of this patient's images")
    cp = parse_checkpoint(split_note(checkpoint)[0])
    entries, pending = [], []
    for row in rows:
        if row.index < cp.size:
            proof = ledger.inclusion_proof(row.index, cp.size)
            entries.append(ReceiptEntry(row.index, ledger.entry(row.index), proof.hashes))
        else:
            pending.append(row.index)
    now = datetime.now(UTC)
    document = build_receipt(
        origin=cp.origin,
        issued=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        checkpoint=checkpoint,
        entries=entries,
        pending=pending,
    )
    receipt = Receipt(document, len(entries), len(pending))
    if archive.audit is not None:
        archive.audit.emit_many(
            [
                AuditEvent(
                    kind=EventKind.EXPORT,
                    time=now,
                    actor=actor,
                    action="patient.receipt",
                    outcome=Outcome.SUCCESS,
                    patient=archive.index.pseudonym(TAG_PATIENT_ID, patient_id),
                    reason=f"patient receipt, request {reference}",
                    details={
                        "receipt_sha256": hashlib.sha256(receipt.json_bytes()).hexdigest(),
                        "tree_size": cp.size,
                        "accesses": len(entries),
                    },
                )
            ]
        )
    return receipt


def receipt_html(receipt: Receipt) -> str:
    """A printable page of the receipt: each access, and how to check it without the archive."""
    doc = receipt.document
    rows = []
    for item in doc["entries"]:
        event = json.loads(base64.b64decode(item["entry"]))
        actor = event.get("actor", {})
        obj = event.get("object") or {}
        what = f"{obj.get('type', '')} {obj.get('id', '')}"
        cells = [item["index"], event.get("time", ""), actor.get("id", ""), event.get("action", ""),
                 event.get("outcome", ""), what, event.get("reason") or ""]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    digest = hashlib.sha256(receipt.json_bytes()).hexdigest()
    checkpoint = html.escape(doc["checkpoint"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Receipt of disclosures</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:.3em .5em;font-size:90%}}
pre{{background:#f4f4f4;padding:.5em;white-space:pre-wrap}}</style></head><body>
<h1>Receipt: who accessed these images</h1>
<p>Issued {html.escape(doc["issued"])} from log <code>{html.escape(doc["origin"])}</code>.
{receipt.witnessed} accesses are proven to be in the log as its independent witnesses cosigned it;
{receipt.pending} later ones are not witnessed yet.</p>
<table><tr><th>entry</th><th>time (UTC)</th><th>who</th><th>what</th><th>outcome</th><th>object</th>
<th>why</th></tr>
{"".join(rows)}
</table>
<h2>Checking it yourself</h2>
<p>With the JSON receipt (SHA-256 <code>{digest}</code>) and the witness policy published by the
hospital (its log key and its witnesses' keys), run <code>medvault-receipt-verify receipt.json --policy
policy.txt</code>. It needs no access to the archive.</p>
<h2>The cosigned checkpoint</h2><pre>{checkpoint}</pre>
</body></html>
"""
