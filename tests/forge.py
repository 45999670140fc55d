"""Packages and envelopes as an attacker, a broken compiler or a bad link would make them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract import (
    PAYLOAD_TYPE,
    Manifest,
    Package,
    canonical_json,
    key_id,
    load_private_key,
    pae,
    sign_manifest,
)
from compiler.compile.package import write_package


def package_from(
    base: Package,
    out: Path,
    key: Path,
    *,
    version: str,
    model: Path | None = None,
    golden: tuple[np.ndarray, np.ndarray] | Path | bool | None = True,
    chunk_size: int | None = None,
) -> Package:
    """A real signed package like ``base`` with another version, model file or golden set.
    ``golden=True`` keeps base's golden file, ``None`` drops it, a pair replaces it, a path is
    shipped as the golden file whatever it holds."""
    golden_path = None
    if isinstance(golden, Path):
        golden_path = golden
    elif golden is True and base.manifest.golden is not None:
        golden_path = base.root / base.manifest.golden.path
    elif isinstance(golden, tuple):
        golden_path = out / "golden-src.npz"
        out.mkdir(parents=True, exist_ok=True)
        np.savez(golden_path, inputs=golden[0], outputs=golden[1])
    m = base.manifest
    return write_package(
        out, model or base.model_path, name=m.name, version=version, input_spec=m.input,
        preprocess=m.preprocess, postprocess=m.postprocess, metrics={}, signing_key=key,
        chunk_size=chunk_size or m.model.chunk_size, golden=golden_path,
    )  # fmt: skip


def golden_of(base: Package, model: Path) -> tuple[np.ndarray, np.ndarray]:
    """``base``'s golden inputs and what ``model`` answers to them: a golden set for a package
    of another model on the same inputs (e.g. a random-weight one of some size)."""
    import onnxruntime as ort

    inputs = np.load(base.root / "golden.npz")["inputs"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return inputs, session.run(None, {"input": inputs})[0]


def resign(package: Package, key: Path, **changes: Any) -> Package:
    """The same files under a manifest with ``changes``, signed again (so the signature is good)."""
    manifest = package.manifest.model_copy(update=changes)
    return Package(package.root, sign_manifest(manifest, load_private_key(key)), manifest)


def sign_raw(body: Any, key: Path) -> bytes:
    """Sign a manifest body that the schema would reject (the signature itself is good): a DSSE
    envelope whose payload is the canonical JSON of ``body``."""
    return sign_payload(canonical_json(body), key)


def sign_payload(payload: bytes, key: Path, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """A DSSE envelope of any payload bytes, signed by ``key`` over PAE(payload_type, payload)."""
    private = load_private_key(key)
    signature = private.sign(pae(payload_type, payload))
    entry = {"keyid": key_id(private.public_key()), "sig": base64.b64encode(signature).decode()}
    return canonical_json(
        {
            "payloadType": payload_type,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [entry],
        }
    )


def sign_raw_v1(body: Any, key: Path) -> bytes:
    """The old (schema version 1) envelope: the signature over canonical JSON of ``body``."""
    private = load_private_key(key)
    signature = private.sign(canonical_json(body))
    entry = {
        "key_id": key_id(private.public_key()),
        "alg": "ed25519",
        "sig": base64.b64encode(signature).decode(),
    }
    return canonical_json({"manifest": body, "signatures": [entry]})


def sign_v1(manifest: Manifest, key: Path) -> bytes:
    """A manifest as the compiler signed it before DSSE (schema version 1, v1 envelope)."""
    return sign_raw_v1(manifest.model_copy(update={"schema_version": 1}).to_dict(), key)


def body_of(envelope: bytes) -> dict[str, Any]:
    """The manifest object an envelope (DSSE or v1) carries, unverified."""
    data = json.loads(envelope)
    if "manifest" in data:
        return dict(data["manifest"])
    return dict(json.loads(base64.b64decode(data["payload"])))


def edited(envelope: bytes, **changes: Any) -> bytes:
    """An envelope whose manifest was changed after signing (the signature kept)."""
    data = json.loads(envelope)
    if "manifest" in data:
        data["manifest"].update(changes)
    else:
        data["payload"] = base64.b64encode(
            canonical_json({**body_of(envelope), **changes})
        ).decode()
    return canonical_json(data)


def manifest_body(manifest: Manifest) -> dict[str, Any]:
    return manifest.to_dict()
