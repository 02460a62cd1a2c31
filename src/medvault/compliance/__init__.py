"""Compliance workflows over the archive, the index and the ledger (DESIGN.md, "Layout")."""
