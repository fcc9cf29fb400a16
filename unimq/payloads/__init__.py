"""Payloads beyond the broker's limits: claim-check, encryption, schema versioning (docs/payloads.md).

All three are :class:`unimq.middleware.Middleware`: register them with ``broker.use(...)`` or
``middlewares=[...]``. Recommended order: ``Versioned``, ``Encrypted``, ``ClaimCheck`` — on the
way out the body is stamped, encrypted, then stored if large (the store sees only ciphertext);
on the way in the reference is resolved, decrypted, then upcast.
"""

from unimq.payloads.claim_check import HEADER as CLAIM_CHECK_HEADER
from unimq.payloads.claim_check import ClaimCheck, ReferenceError, parse_reference, resolve
from unimq.payloads.encryption import KEY_ID, DecryptionError, Encrypted
from unimq.payloads.limits import size_limits
from unimq.payloads.stores import AzureBlobStore, FileStore, ObjectMissing, S3Store, Store, open_store
from unimq.payloads.versioning import HEADER as SCHEMA_VERSION_HEADER
from unimq.payloads.versioning import SchemaVersionError, Versioned

__all__ = [
    "CLAIM_CHECK_HEADER",
    "KEY_ID",
    "SCHEMA_VERSION_HEADER",
    "AzureBlobStore",
    "ClaimCheck",
    "DecryptionError",
    "Encrypted",
    "FileStore",
    "ObjectMissing",
    "ReferenceError",
    "S3Store",
    "SchemaVersionError",
    "Store",
    "Versioned",
    "open_store",
    "parse_reference",
    "resolve",
    "size_limits",
]
