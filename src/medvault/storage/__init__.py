"""Blob storage: stores and returns opaque bytes (always ciphertext) by key.

The storage layer never sees keys or plaintext; encryption wraps storage in the service layer.
"""

from medvault.storage.base import BlobInfo, BlobStore
from medvault.storage.filesystem import FilesystemBlobStore

__all__ = ["BlobInfo", "BlobStore", "FilesystemBlobStore"]
