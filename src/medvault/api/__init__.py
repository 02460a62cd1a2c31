"""The HTTP API (FastAPI): DICOMweb and health. Translates requests to the archive service."""

from medvault.api.app import create_app

__all__ = ["create_app"]
