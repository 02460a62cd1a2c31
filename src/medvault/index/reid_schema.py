"""Table of the re-identification maps kept by exports (``medvault export --keep-map``).

Registered on :data:`medvault.index.schema.metadata`, so ``Index.create_schema`` creates it once
this module is imported; :class:`medvault.index.reid.ReidMapStore` also creates it on first use.
The map itself (original UIDs and PatientIDs -> their replacements) is PHI: ``doc`` is a
``FieldCipher`` ciphertext under the context ``b"reid/" + project``. The clear columns are not
PHI: the project name, a random export id, who ran the export and when.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, LargeBinary, String, Table

from medvault.index.schema import metadata

reid_maps = Table(
    "reid_maps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", String(64), nullable=False, index=True),
    Column("export_id", String(32), nullable=False, unique=True),
    Column("actor", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("doc", LargeBinary, nullable=False),  # FieldCipher(JSON of the map), context reid/<project>
)
