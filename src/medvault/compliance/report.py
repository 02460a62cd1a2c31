"""The safeguards report as a document: one body (JSON-ready), its SHA-256, three renderings.

The hash is over the body's canonical JSON (sorted keys, no spaces, UTF-8), so any rendering can
be checked against the ledger entry that recorded it: ``medvault report compliance --format json``
prints the body and its hash; HTML and PDF print the hash and the ledger index on every copy.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from medvault.compliance.safeguards import OUT_OF_SCOPE, Control, Evidence, Thresholds, assess, overall

__all__ = ["FORMATS", "Format", "SafeguardsReport", "body_hash", "build", "render"]

Format = Literal["html", "json", "pdf"]
FORMATS: Final = ("html", "json", "pdf")
_LABEL: Final = {"met": "met", "attention": "needs attention", "not_met": "not met"}
_COLOUR: Final = {"met": "#1a7f37", "attention": "#9a6700", "not_met": "#cf222e"}


def body_hash(body: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``body``'s canonical JSON: what the ledger entry names."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SafeguardsReport:
    body: dict[str, Any]
    controls: tuple[Control, ...]

    @property
    def sha256(self) -> str:
        return body_hash(self.body)


def build(evidence: Evidence, *, origin: str, thresholds: Thresholds | None = None) -> SafeguardsReport:
    controls = tuple(assess(evidence, thresholds))
    counts = {status: sum(1 for c in controls if c.status == status) for status in _LABEL}
    body = {
        "report": "medvault safeguards report",
        "format": 1,
        "archive": origin,
        "generated_at": evidence.generated_at.isoformat().replace("+00:00", "Z"),
        "medvault_version": evidence.medvault_version,
        "overall": overall(controls),
        "summary": counts,
        "controls": [c.as_dict() for c in controls],
        "out_of_scope": list(OUT_OF_SCOPE),
    }
    return SafeguardsReport(body=body, controls=controls)


def render(report: SafeguardsReport, fmt: Format, *, ledger_index: int | None) -> bytes:
    if fmt == "json":
        doc = {"body": report.body, "sha256": report.sha256, "ledger_index": ledger_index}
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    if fmt == "html":
        return _html(report, ledger_index).encode()
    return _pdf(report, ledger_index)


def _stamp(report: SafeguardsReport, ledger_index: int | None) -> str:
    where = "not ledgered" if ledger_index is None else f"ledger entry {ledger_index}"
    return f"SHA-256 of the report body: {report.sha256} ({where})"


def _html(report: SafeguardsReport, ledger_index: int | None) -> str:
    body = report.body
    e = html.escape
    rows = []
    for c in report.controls:
        facts = "".join(f"<li>{e(f)}</li>" for f in c.evidence)
        todo = f'<p class="todo"><b>To do:</b> {e(c.action)}</p>' if c.action else ""
        rows.append(
            f"<tr><td>{e(c.reference)}</td><td><b>{e(c.title)}</b><ul>{facts}</ul>{todo}</td>"
            f'<td class="st" style="color:{_COLOUR[c.status]}">{e(_LABEL[c.status])}</td></tr>'
        )
    summary = ", ".join(f"{n} {_LABEL[s]}" for s, n in body["summary"].items())
    scope = "".join(f"<li>{e(item)}</li>" for item in body["out_of_scope"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Safeguards report — {e(body["archive"])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #1f2328; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-top: 1px solid #d0d7de; padding: .5rem; vertical-align: top; text-align: left; }}
td.st {{ font-weight: 600; white-space: nowrap; }} ul {{ margin: .3rem 0; }} .todo {{ margin: .3rem 0; }}
code {{ font-size: 12px; word-break: break-all; }}
</style></head><body>
<h1>Safeguards report</h1>
<p>Archive <b>{e(body["archive"])}</b>, medvault {e(body["medvault_version"])}, measured
{e(body["generated_at"])}. Overall:
<b style="color:{_COLOUR[body["overall"]]}">{e(_LABEL[body["overall"]])}</b>
({e(summary)}).</p>
<table><thead><tr><th>Reference</th><th>Control and evidence</th><th>Status</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Not evidenced by the archive</h2><ul>{scope}</ul>
<p><code>{e(_stamp(report, ledger_index))}</code></p>
</body></html>
"""


def _latin1(text: str) -> str:
    """The PDF's core fonts carry Latin-1 only: common punctuation mapped, anything else '?'."""
    mapped = text.translate({0x2014: "-", 0x2013: "-", 0x2019: "'", 0x201C: '"', 0x201D: '"', 0x2026: "..."})
    return mapped.encode("latin-1", "replace").decode("latin-1")


def _pdf(report: SafeguardsReport, ledger_index: int | None) -> bytes:
    from fpdf import FPDF

    body = report.body
    pdf = FPDF(format="A4")
    pdf.set_title("medvault safeguards report")
    pdf.set_creator(f"medvault {body['medvault_version']}")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def line(text: str, *, size: float = 10, style: str = "", height: float = 5, indent: float = 0) -> None:
        pdf.set_font("Helvetica", style=style, size=size)
        pdf.set_x(pdf.l_margin + indent)
        pdf.multi_cell(width - indent, height, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    line("Safeguards report", size=18, style="B", height=9)
    line(f"Archive {body['archive']}, medvault {body['medvault_version']}, measured {body['generated_at']}")
    summary = ", ".join(f"{n} {_LABEL[s]}" for s, n in body["summary"].items())
    line(f"Overall: {_LABEL[body['overall']]} ({summary})", style="B")
    pdf.ln(3)
    for c in report.controls:
        line(f"{c.reference}  {c.title}: {_LABEL[c.status].upper()}", size=11, style="B", height=6)
        for fact in c.evidence:
            line(f"- {fact}", indent=4)
        if c.action:
            line(f"To do: {c.action}", style="I", indent=4)
        pdf.ln(2)
    line("Not evidenced by the archive", size=11, style="B", height=6)
    for item in _items(body["out_of_scope"]):
        line(f"- {item}", indent=4)
    pdf.ln(2)
    line(_stamp(report, ledger_index), size=8, height=4)
    return bytes(pdf.output())


def _items(values: Sequence[object]) -> list[str]:
    return [str(v) for v in values]
