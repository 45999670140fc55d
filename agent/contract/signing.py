"""Ed25519 signatures over canonical JSON manifests.

On the wire a package announcement is an envelope::

    {"manifest": {...}, "signatures": [{"key_id": "...", "alg": "ed25519", "sig": "<base64>"}]}

The signed bytes are :func:`canonical_json` of ``manifest`` (sorted keys, no whitespace, UTF-8),
so any party re-serialising the parsed object gets the same bytes back. Several signatures let a
fleet rotate keys: a device accepts the envelope if any signature is by a key it trusts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.contract.errors import ManifestError, PayloadError, SignatureError
from agent.contract.manifest import Manifest
from agent.contract.strictjson import parse_json


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short stable name of a public key: the first 16 hex digits of sha256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_private(path: Path, data: bytes) -> None:
    """Write a secret: created 0600 from the first byte (never readable by others, even briefly),
    then renamed into place over any older file."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    partial.replace(path)


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair as PEM (private key mode 0600); returns its key id."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(Path(private_path), pem)
    public = private.public_key()
    public_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(public)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, OSError) as exc:
        raise SignatureError(f"{path}: cannot read public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> bytes:
    """The wire envelope (UTF-8 JSON bytes) for a manifest, signed by one key."""
    body = manifest.to_dict()
    signature = private_key.sign(canonical_json(body))
    envelope = {
        "manifest": body,
        "signatures": [
            {
                "key_id": key_id(private_key.public_key()),
                "alg": "ed25519",
                "sig": base64.b64encode(signature).decode("ascii"),
            }
        ],
    }
    return canonical_json(envelope)


class TrustStore:
    """The public keys a device accepts packages from."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]):
        self._keys = {key_id(k): k for k in keys}
        if not self._keys:
            raise SignatureError("no trusted public keys configured")

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> TrustStore:
        return cls(load_public_key(p) for p in paths)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, envelope: bytes) -> Manifest:
        """Check an envelope's signature and schema; returns the manifest or raises a
        ContractError whose message never quotes the envelope."""
        body, signatures = _envelope_parts(envelope)
        signed_bytes = canonical_json(body)
        seen = []
        for entry in signatures:
            kid, alg, sig = _signature_fields(entry)
            seen.append(kid if _KEY_ID.match(kid) else "?")
            key = self._keys.get(kid)
            if key is None or alg != "ed25519":
                continue
            try:
                key.verify(base64.b64decode(sig, validate=True), signed_bytes)
            except (InvalidSignature, ValueError) as exc:
                raise SignatureError(
                    f"signature by trusted key {kid} does not verify: manifest altered or forged"
                ) from exc
            return Manifest.from_dict(body)
        raise SignatureError(
            f"manifest signed by untrusted key(s) {seen or 'none'}; trusted: {self.key_ids}"
        )


_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_SIGNATURES = 8  # a few keys during a rotation; more is noise to make the device work


def _envelope_parts(envelope: bytes) -> tuple[dict[str, Any], list[Any]]:
    """``manifest`` and ``signatures`` of an envelope, parsed strictly and type-checked."""
    try:
        data = parse_json(envelope)
    except PayloadError as exc:
        raise ManifestError(f"not a signed manifest envelope: {exc}") from exc
    if not isinstance(data, dict) or set(data) != {"manifest", "signatures"}:
        raise ManifestError(
            "not a signed manifest envelope: expected an object with manifest and signatures"
        )
    body, signatures = data["manifest"], data["signatures"]
    if not isinstance(body, dict) or not isinstance(signatures, list):
        raise ManifestError(
            "not a signed manifest envelope: manifest must be an object and signatures a list"
        )
    if len(signatures) > MAX_SIGNATURES:
        raise ManifestError(f"not a signed manifest envelope: over {MAX_SIGNATURES} signatures")
    return body, signatures


def _signature_fields(entry: object) -> tuple[str, str, str]:
    """key_id, alg and sig of one signature: strings, or the envelope is malformed."""
    fields = entry if isinstance(entry, dict) else {}
    kid, alg, sig = (fields.get(k) for k in ("key_id", "alg", "sig"))
    if isinstance(kid, str) and isinstance(alg, str) and isinstance(sig, str):
        return kid, alg, sig
    raise ManifestError(
        "not a signed manifest envelope: each signature needs key_id, alg and sig as strings"
    )
