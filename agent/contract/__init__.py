"""The wire contract between the compiler (cloud) and the agent (device).

Owned by the agent so a device needs nothing else; the compiler imports it.
"""

from .blob import describe_model_file, iter_chunks, sha256_file
from .errors import ContractError, IntegrityError, ManifestError, SignatureError
from .manifest import (
    DEFAULT_CHUNK_SIZE,
    ClassificationSpec,
    InputSpec,
    Manifest,
    ModelFile,
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
    "ClassificationSpec",
    "ContractError",
    "InputSpec",
    "IntegrityError",
    "Manifest",
    "ManifestError",
    "ModelFile",
    "PreprocessSpec",
    "SignatureError",
    "Topics",
    "TrustStore",
    "canonical_json",
    "describe_model_file",
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
