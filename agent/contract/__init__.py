"""The wire contract between the compiler (cloud) and the agent (device).

Owned by the agent so a device needs nothing else; the compiler imports it.
"""

from agent.contract.audio import LogMelSpec, log_mel, logmel_batch, logmel_tensor
from agent.contract.blob import describe_blob, iter_chunks, sha256_file
from agent.contract.envelope import PAYLOAD_TYPE, canonical_json, open_envelope, pae
from agent.contract.errors import (
    ContractError,
    IntegrityError,
    ManifestError,
    PayloadError,
    SignatureError,
)
from agent.contract.manifest import (
    DEFAULT_CHUNK_SIZE,
    DELIVERIES,
    BlobSpec,
    ClassificationSpec,
    ConstantSpec,
    Delivery,
    DetectionSpec,
    EventsSpec,
    InputSpec,
    Manifest,
    ScoreSpec,
    StateSpec,
    describe_errors,
    parse_semver,
)
from agent.contract.package import MANIFEST_FILE, Package, read_package
from agent.contract.preprocess import (
    AnySpec,
    InputTransform,
    PreprocessSpec,
    SensorSpec,
    letterbox_transform,
    preprocess,
    preprocess_batch,
    preprocess_into,
    to_tensor,
)
from agent.contract.reasons import MAX_REASON, clip, summarise
from agent.contract.signing import (
    TrustStore,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_manifest,
    write_private,
)
from agent.contract.strictjson import parse_json
from agent.contract.topics import DEVICE_ID_PATTERN, Topics, dot_problem
from agent.contract.wants import ChunkRequest
from agent.contract.waveform import WaveformSpec, waveform_tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DELIVERIES",
    "DEVICE_ID_PATTERN",
    "MANIFEST_FILE",
    "MAX_REASON",
    "PAYLOAD_TYPE",
    "AnySpec",
    "BlobSpec",
    "ChunkRequest",
    "ClassificationSpec",
    "ConstantSpec",
    "ContractError",
    "Delivery",
    "DetectionSpec",
    "EventsSpec",
    "InputSpec",
    "InputTransform",
    "IntegrityError",
    "LogMelSpec",
    "Manifest",
    "ManifestError",
    "Package",
    "PayloadError",
    "PreprocessSpec",
    "ScoreSpec",
    "SensorSpec",
    "SignatureError",
    "StateSpec",
    "Topics",
    "TrustStore",
    "WaveformSpec",
    "canonical_json",
    "clip",
    "describe_blob",
    "describe_errors",
    "dot_problem",
    "generate_keypair",
    "iter_chunks",
    "key_id",
    "letterbox_transform",
    "load_private_key",
    "load_public_key",
    "log_mel",
    "logmel_batch",
    "logmel_tensor",
    "open_envelope",
    "pae",
    "parse_json",
    "parse_semver",
    "preprocess",
    "preprocess_batch",
    "preprocess_into",
    "read_package",
    "sha256_file",
    "sign_manifest",
    "summarise",
    "to_tensor",
    "waveform_tensor",
    "write_private",
]
