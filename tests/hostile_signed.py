"""Hostile payloads signed by the trusted key: what a compromised build server, a buggy compiler
or a careless operator could push. Each lies about the model in a way a signature cannot catch.

Manifests that make the agent download carry their supporting chunks in ``Payload.before``
(published retained first, so the download really happens); hostile chunk bytes are payloads of
their own on the chunk topics, published just before the manifest that makes the agent ask for
them. Versions are distinct (1.0.N) so that no row hides behind another's quarantine entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from forge import sign_payload, sign_raw, sign_raw_v1
from hostile import Payload, Scene, spread
from hostile_wire import WRONG, dotted, dump, paths, set_at

from agent.contract import (
    PAYLOAD_TYPE,
    BlobSpec,
    canonical_json,
    describe_blob,
    iter_chunks,
    key_id,
    pae,
)

Body = dict[str, Any]
Chunks = tuple[tuple[str, bytes], ...]


class Versions:
    """Hands out 1.0.1, 1.0.2, …: each signed row its own version."""

    def __init__(self, start: int = 1):
        self._next = start

    def __call__(self) -> str:
        self._next += 1
        return f"1.0.{self._next - 1}"


def body(scene: Scene, **changes: Any) -> Body:
    """The served package's manifest as a dict, with ``changes`` (nested dicts are merged)."""
    out = scene.base.manifest.to_dict()
    for key, value in changes.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and out.get(key) else value
    return out


def chunks_of(scene: Scene, blob: BlobSpec, path: Path) -> Chunks:
    return tuple(
        (scene.topics.blob_chunk(blob.sha256, i), chunk)
        for i, chunk in enumerate(iter_chunks(path, blob.chunk_size))
    )


def base_chunks(scene: Scene, golden: bool = True) -> Chunks:
    """The served package's own chunks: a manifest reusing its files downloads these."""
    out = chunks_of(scene, scene.base.manifest.model, scene.base.model_path)
    m = scene.base.manifest
    if golden and m.golden is not None:
        out += chunks_of(scene, m.golden, scene.base.root / m.golden.path)
    return out


def fake_blob(size: int, chunk_size: int, seed: int) -> BlobSpec:
    """A blob nobody has the bytes of: the agent starts a download that never completes."""
    rng = random.Random(seed)
    count = -(-size // chunk_size)
    hashes = tuple(rng.randbytes(32).hex() for _ in range(count))
    return BlobSpec.model_construct(
        path="model.onnx", sha256=rng.randbytes(32).hex(), size=size, chunk_size=chunk_size,
        chunks=hashes,
    )  # fmt: skip


def golden_files(root: Path, inputs: np.ndarray) -> dict[str, Path]:
    """Golden files that are not an npz of plain arrays."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"pickle": root / "golden-pickle.npz", "random-bytes": root / "golden-random.npz"}
    files["pickle"].write_bytes(pickle.dumps({"inputs": inputs, "outputs": inputs}))
    files["random-bytes"].write_bytes(random.Random(5).randbytes(5000))
    variants: dict[str, dict[str, np.ndarray]] = {
        "object-arrays": {"inputs": np.array([{"x": 1}], dtype=object), "outputs": inputs},
        "no-outputs": {"inputs": inputs},
        "wrong-rank": {"inputs": inputs.reshape(len(inputs), -1), "outputs": inputs},
        "strings": {"inputs": np.array(["a", "b"]), "outputs": np.array(["c"])},
    }
    for name, arrays in variants.items():
        files[name] = root / f"golden-{name}.npz"
        np.savez(files[name], **arrays)  # type: ignore[arg-type]
    return files


def _deploy(scene: Scene, kind: str, signed: bytes, note: str = "", **extra: Any) -> Payload:
    return Payload(kind, scene.deploy_topics[0], signed, note=note, **extra)


def unusable(scene: Scene, version: Versions) -> list[Payload]:
    """Issue 12's three signed rows (and variants): fine on paper, unusable on the device."""
    key, chunks = scene.key, base_chunks(scene)
    labels = body(scene, version=version(), postprocess={"labels": ["a", "b"]})
    out = [_deploy(scene, "issue:labels-2-for-10-scores", sign_raw(labels, key),
                   before=chunks, slow=True)]  # fmt: skip
    for note, change in (("input", {"input": {"dtype": "uint8"}}),
                         ("input-and-preprocess", {"input": {"dtype": "uint8"},
                                                   "preprocess": {"dtype": "uint8"}})):  # fmt: skip
        forged = body(scene, version=version(), **change)
        out.append(_deploy(scene, "issue:uint8-input-float-model", sign_raw(forged, key),
                           note=note, before=chunks, slow=True))  # fmt: skip
    golden = scene.base.manifest.golden
    inputs = np.load(scene.base.root / golden.path)["inputs"] if golden else np.zeros((1, 1))
    for note, path in golden_files(scene.work / "golden", inputs).items():
        blob = describe_blob(path, 64 * 1024).model_copy(update={"path": "golden.npz"})
        forged = body(scene, version=version(), golden=blob.model_dump(mode="json"))
        support = base_chunks(scene, golden=False) + chunks_of(scene, blob, path)
        out.append(_deploy(scene, "issue:golden-not-npz-of-arrays", sign_raw(forged, key),
                           note=note, before=support, slow=True))  # fmt: skip
    return out


def abandoned(scene: Scene, version: Versions) -> list[Payload]:
    """Downloads that start and never finish: a sparse 500 MB file, 14,000 and 100,000 chunks, a
    golden file whose chunks never come."""
    out = []
    for note, size, chunk_size in (("500MB", 500_000_000, 1_000_000),
                                   ("500MB-128KiB-chunks", 500_000_000, 131_072),
                                   ("14k-chunks", 504_000_000, 36_000),
                                   ("100k-chunks", 500_000_000, 5_000)):  # fmt: skip
        blob = fake_blob(size, chunk_size, seed=size + chunk_size)
        forged = body(scene, version=version(), model=blob.model_dump(mode="json"))
        out.append(_deploy(scene, "signed:never-completes", sign_raw(forged, scene.key),
                           note=note, slow=True))  # fmt: skip
    golden = fake_blob(40_000, 8192, seed=7).model_copy(update={"path": "golden.npz"})
    forged = body(scene, version=version(), golden=golden.model_dump(mode="json"))
    out.append(_deploy(scene, "signed:never-completes", sign_raw(forged, scene.key),
                       note="golden-chunks-missing", before=base_chunks(scene, golden=False),
                       slow=True))  # fmt: skip
    return out


def chunk_attacks(scene: Scene, version: Versions) -> list[Payload]:
    """Hostile bytes on the chunk topics of a signed manifest's (random, 3-chunk) model."""
    size = 3 * 8192
    out: list[Payload] = []
    variants = ("random", "bit-flip", "one-more-byte", "double", "one-byte", "next-chunk",
                "near-cap", "8MiB", "json", "stray-topics")  # fmt: skip
    for n, variant in enumerate(variants):
        data = random.Random(100 + n).randbytes(size)
        path = scene.work / "chunks" / f"{variant}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        blob = describe_blob(path, 8192)
        real = chunks_of(scene, blob, path)
        hostile = _chunk_variant(variant, real, scene, blob)
        support = real if variant == "stray-topics" else real[1:]
        for topic, payload in hostile:
            out.append(Payload(f"chunk:{variant}", topic, payload, note=f"{blob.sha256[:8]}"))
        forged = body(scene, version=version(), model=blob.model_dump(mode="json"))
        out.append(_deploy(scene, f"chunk:{variant}", sign_raw(forged, scene.key),
                           note="manifest", before=support, slow=True))  # fmt: skip
    return out


def _chunk_variant(variant: str, real: Chunks, scene: Scene, blob: BlobSpec) -> Chunks:
    (topic, first), (_, second) = real[0], real[1]
    flipped = bytes([first[0] ^ 1]) + first[1:]
    stray = [scene.topics.blob_chunk(blob.sha256, i) for i in (3, 99, 10**12)]
    stray += [f"{scene.topics.blob_chunks(blob.sha256)[:-1]}{x}" for x in ("-1", "abc", "0x0")]
    table: dict[str, Chunks] = {
        "random": ((topic, random.Random(1).randbytes(len(first))),),
        "bit-flip": ((topic, flipped),),
        "one-more-byte": ((topic, first + b"\x00"),),
        "double": ((topic, first * 2),),
        "one-byte": ((topic, first[:1]),),
        "next-chunk": ((topic, second),),
        "near-cap": ((topic, first * 126),),
        "8MiB": ((topic, first * 1024),),
        "json": ((topic, json.dumps({"chunk": 0, "data": first.hex()}).encode()),),
        "stray-topics": tuple((t, first) for t in stray),
    }
    return table[variant]


def untrusted_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"untrusted%d" % seed).digest())


def signed_by(body_: Body, private: Ed25519PrivateKey) -> bytes:
    payload = canonical_json(body_)
    sig = base64.b64encode(private.sign(pae(PAYLOAD_TYPE, payload))).decode()
    return dsse(payload, [{"keyid": key_id(private.public_key()), "sig": sig}])


def dsse(payload: bytes, signatures: list[dict[str, str]]) -> bytes:
    encoded = base64.b64encode(payload).decode()
    return canonical_json(
        {"payloadType": PAYLOAD_TYPE, "payload": encoded, "signatures": signatures}
    )


def sign_loose(body_: Any, key: Path) -> bytes:
    """Signed by the trusted key even when the body holds what canonical JSON refuses (NaN, a
    lone surrogate): then over the bytes a careless signer would write."""
    try:
        return sign_raw(body_, key)
    except (ValueError, UnicodeEncodeError):
        return sign_payload(dump(body_), key)


def signed_cheap(scene: Scene, rng: random.Random) -> list[Payload]:
    """Signed payloads refused (or ignored) without a download: wrong types re-signed, replays,
    another target, an untrusted key, no signature, a newer agent needed, huge fields."""
    key, served = scene.key, scene.base.manifest.to_dict()
    wrong = [
        (f"{dotted(path)}={name}", sign_loose(set_at(served, path, value), key))
        for path in paths(served)[1:]
        for name, value in WRONG
        if rng.random() < 0.5  # half of them: the unsigned corpus has every one
    ]
    out = spread(scene, "signed:wrong-type", wrong)
    unsigned = dsse(canonical_json(body(scene, version="1.9.1")), [])
    labels = {"labels": ["L" * 30] * 30_000}
    rows = [
        ("signed:replay", "older-version", sign_raw(body(scene, version="0.9.0"), key)),
        ("signed:replay", "served-envelope", scene.base.envelope),
        ("signed:other-target", "device", sign_raw(body(scene, target="device:other-cam"), key)),
        ("signed:other-target", "group", sign_raw(body(scene, target="group:elsewhere"), key)),
        ("signed:untrusted-key", "new", signed_by(body(scene, version="1.9.0"), untrusted_key(1))),
        ("signed:unsigned", "no-signatures", unsigned),
        ("signed:v1", "older-version",
         sign_raw_v1(body(scene, version="0.9.1", schema_version=1), key)),
        ("signed:v1", "schema-2-in-v1", sign_raw_v1(body(scene, version="1.9.3"), key)),
        ("signed:other-type", "application/json",
         sign_payload(canonical_json(body(scene, version="1.9.4")), key, "application/json")),
        ("signed:needs-newer-agent", "99.0.0",
         sign_raw(body(scene, version="1.9.2", min_agent_version="99.0.0"), key)),
        ("signed:huge-field", "name-1MB", sign_raw(body(scene, name="n" * 1_000_000), key)),
        ("signed:huge-field", "labels-30k", sign_raw(body(scene, postprocess=labels), key)),
        ("signed:huge-field", "target-500k",
         sign_raw(body(scene, target="device:" + "t" * 500_000), key)),
    ]  # fmt: skip
    for kind, note, data in rows:
        out += spread(scene, kind, [(note, data)] * 3)
    return out


def installable(scene: Scene) -> list[Payload]:
    """Signed, complete and working, but absurd: today's agent installs them. Last in the corpus,
    and the absurd version last of all (after it every real version is a "replay")."""
    version, chunks = Versions(60), base_chunks(scene)
    forged = [(f"name-{name}", body(scene, name=name, version=version()))
              for name in ("con", "current", "previous")]  # fmt: skip
    forged.append(("golden-atol-0", body(scene, version=version(), golden_atol=0)))
    forged.append(("version-99999999999999999999999",
                   body(scene, version="99999999999999999999999.0.0")))  # fmt: skip
    return [
        _deploy(scene, "signed:installs", sign_raw(b, scene.key), note=note, before=chunks,
                slow=True)
        for note, b in forged
    ]  # fmt: skip


def signed_slow(scene: Scene) -> list[Payload]:
    version = Versions()
    return unusable(scene, version) + abandoned(scene, version) + chunk_attacks(scene, version)
