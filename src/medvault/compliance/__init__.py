"""Compliance workflows over the archive, the ledger and the index: retention and legal hold
(retention.py, holds.py, scheduler.py), and what DESIGN.md lists next to them."""
