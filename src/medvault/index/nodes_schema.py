"""Table of the DICOM node registry (modalities and PACS that speak DIMSE over mutual TLS).

Registered on :data:`medvault.index.schema.metadata`, so ``Index.create_schema`` creates it once
this module is imported; :class:`medvault.index.nodes.NodeStore` also creates it on first use.
Nothing here is PHI: names, AE titles, addresses, certificate fingerprints and permissions.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Integer, LargeBinary, String, Table, Text

from medvault.index.schema import metadata

dimse_nodes = Table(
    "dimse_nodes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("ae_title", String(16), nullable=False, index=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("permissions", String(64), nullable=False),  # comma-separated, sorted
    Column("fingerprint", LargeBinary(32), nullable=False, unique=True),  # SHA-256 of the cert DER
    Column("certificate", Text, nullable=False),  # PEM (public; kept to trust site-provided certs)
    Column("issued_by_medvault", Boolean, nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
