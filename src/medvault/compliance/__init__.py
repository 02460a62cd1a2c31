"""Compliance as evidence (DESIGN.md, "Layout"; issue #15): what an auditor asks a hospital to
prove, measured from the archive's own configuration and ledger.

    safeguards.py  the controls and their verdicts (pure: evidence in, controls out)
    evidence.py    measuring an opened archive for them
    report.py      the safeguards report as JSON, HTML or PDF, hashed and ledgered
"""
