"""Compliance as evidence (DESIGN.md, "Layout"; issue #15): what an auditor asks a hospital to
prove, measured from the archive's own configuration and ledger, and the workflows the law asks for.

    safeguards.py  the controls and their verdicts (pure: evidence in, controls out)
    evidence.py    measuring an opened archive for them
    report.py      the safeguards report as JSON, HTML or PDF, hashed and ledgered
    access.py      a patient's right of access: their images and disclosures in one bundle
    rules.py       retention rules decided (pure); retention.py runs them; scheduler.py in serve
    holds.py       legal holds placed and lifted, ledgered
    erasure.py     the right to erasure: request, a second approval, crypto-shredding, certificate
    training.py    training records: courses, completions, reminders, the gate they drive
    manifest.py    a backup's signed manifest (pure); backup.py creates, verifies and restores
"""
