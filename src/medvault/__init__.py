"""medvault: a secure archive for medical images.

Every object is encrypted before it reaches storage, PHI in the index is encrypted, and every
protocol (DICOMweb, the CLI, later DIMSE) goes through one service layer: :mod:`medvault.archive`.
"""

__version__ = "0.1.0"
