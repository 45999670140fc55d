"""The wire contract between the compiler (cloud) and the agent (device).

Owned by the agent so a device needs nothing else; the compiler imports it.
"""

from .blob import describe_blob, iter_chunks, sha256_file
from .errors import ContractError, IntegrityError, ManifestError, SignatureError
from .manifest import (
    DEFAULT_CHUNK_SIZE,
    BlobSpec,
    ClassificationSpec,
    InputSpec,
    Manifest,
    parse_semver,
)
from .preprocess import PreprocessSpec, preprocess, preprocess_batch
from .signing import (
    TrustStore,
    canonical_json,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_manifest,
)
from .topics import Topics

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BlobSpec",
    "ClassificationSpec",
    "ContractError",
    "InputSpec",
    "IntegrityError",
    "Manifest",
    "ManifestError",
    "PreprocessSpec",
    "SignatureError",
    "Topics",
    "TrustStore",
    "canonical_json",
    "describe_blob",
    "generate_keypair",
    "iter_chunks",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_semver",
    "preprocess",
    "preprocess_batch",
    "sha256_file",
    "sign_manifest",
]
