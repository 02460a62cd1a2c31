"""The metadata index: studies, series, instances and their wrapped data keys.

PHI never reaches the database in clear: each level's attributes are stored as an encrypted DICOM
JSON document, and exact-match lookups go through keyed blind indexes (HMAC tokens).
"""

from medvault.index.store import Index, InstanceRecord, NewInstance

__all__ = ["Index", "InstanceRecord", "NewInstance"]
