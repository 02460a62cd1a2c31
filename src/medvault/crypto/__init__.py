"""medvault's security core: the envelope format, the sealed keyring, KEK providers, PHI field
protection and the archive's own CA. Pure apart from :mod:`~medvault.crypto.keyring`'s file
functions and :mod:`~medvault.crypto.tls`'s context builders; imports only the stdlib and
``cryptography``.

Errors raised (all from :mod:`medvault.errors`)::

    MedvaultError
    ├── InvalidInput     a caller passed a bad argument (key length, segment size, empty passphrase)
    ├── IntegrityError   stored bytes failed authentication (one opaque message: no oracle)
    ├── KeyringError     the keyring (or a TLS key) cannot be opened; unknown KEK id
    │   └── WrongPassphrase
    └── ConfigError      TLS certificate/key files cannot be loaded into an SSL context

The byte formats are documented in docs/encryption-format.md.
"""

from medvault.crypto.envelope import (
    HEADER_SIZE,
    SEGMENT_SIZE_DEFAULT,
    EnvelopeHeader,
    ciphertext_length,
    decrypt_object,
    decrypt_range,
    encrypt_object,
    parse_header,
)
from medvault.crypto.fields import BlindIndex, FieldCipher, Pseudonymizer
from medvault.crypto.kek import KekProvider, KeyringKekProvider, WrappedKey, new_data_key, rewrap
from medvault.crypto.keyring import (
    DEFAULT_SCRYPT,
    TEST_SCRYPT,
    Keyring,
    KeyringFile,
    ScryptParams,
    load_keyring,
    open_keyring,
    reseal_with_rotation,
    save_keyring,
)
from medvault.crypto.tls import (
    client_ssl_context,
    create_ca,
    default_hostnames,
    encrypt_private_key,
    issue_client_certificate,
    issue_server_certificate,
    load_private_key_pem,
    server_ssl_context,
)

__all__ = [
    "DEFAULT_SCRYPT",
    "HEADER_SIZE",
    "SEGMENT_SIZE_DEFAULT",
    "TEST_SCRYPT",
    "BlindIndex",
    "EnvelopeHeader",
    "FieldCipher",
    "KekProvider",
    "Keyring",
    "KeyringFile",
    "KeyringKekProvider",
    "Pseudonymizer",
    "ScryptParams",
    "WrappedKey",
    "ciphertext_length",
    "client_ssl_context",
    "create_ca",
    "decrypt_object",
    "decrypt_range",
    "default_hostnames",
    "encrypt_object",
    "encrypt_private_key",
    "issue_client_certificate",
    "issue_server_certificate",
    "load_keyring",
    "load_private_key_pem",
    "new_data_key",
    "open_keyring",
    "parse_header",
    "reseal_with_rotation",
    "rewrap",
    "save_keyring",
    "server_ssl_context",
]
