"""Ed25519 keys, signing and the trust store; the envelope itself is
:mod:`agent.contract.envelope` (DSSE, and the old v1 format still verified).

Several signatures let a fleet rotate keys: a device accepts the envelope if any signature is by
a key it trusts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.contract.envelope import (
    PAYLOAD_TYPE,
    canonical_json,
    dsse_envelope,
    open_envelope,
    pae,
    unb64,
)
from agent.contract.errors import ManifestError, SignatureError
from agent.contract.manifest import SCHEMA_VERSION, Manifest


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
    """The wire envelope (DSSE, UTF-8 JSON bytes) for a manifest, signed by one key. The
    manifest is written as schema version 2 whatever it was read as."""
    current = manifest.model_copy(update={"schema_version": SCHEMA_VERSION})
    payload = canonical_json(current.to_dict())
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload))
    return dsse_envelope(payload, [(key_id(private_key.public_key()), signature)])


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

    def key(self, kid: str) -> Ed25519PublicKey | None:
        """The trusted key of that id, or None."""
        return self._keys.get(kid)

    def verify(self, envelope: bytes) -> Manifest:
        """Check an envelope's signature, then parse and check its manifest; returns the
        manifest or raises a ContractError whose message never quotes the envelope. A DSSE
        envelope must carry a schema version 2 manifest, a v1 envelope a version 1 one."""
        opened = open_envelope(envelope)
        seen = []
        for kid, alg, sig in opened.signatures:
            seen.append(kid if _KEY_ID.match(kid) else "?")
            key = self._keys.get(kid)
            if key is None or alg != "ed25519":
                continue
            try:
                key.verify(unb64(sig), opened.signed)
            except (InvalidSignature, ValueError) as exc:
                raise SignatureError(
                    f"signature by trusted key {kid} does not verify: manifest altered or forged"
                ) from exc
            manifest = Manifest.from_dict(opened.manifest_body())
            if manifest.schema_version != opened.format:
                raise ManifestError(
                    f"a v{opened.format} envelope cannot carry a schema_version "
                    f"{manifest.schema_version} manifest"
                )
            return manifest
        raise SignatureError(
            f"manifest signed by untrusted key(s) {seen or 'none'}; trusted: {self.key_ids}"
        )


_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
