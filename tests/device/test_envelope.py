"""The DSSE envelope: the signature covers PAE over the exact payload bytes, which are parsed
only once verified; every bad envelope is one clear line. The old v1 envelope still verifies."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from agent.contract import (
    PAYLOAD_TYPE,
    ContractError,
    Manifest,
    ManifestError,
    SignatureError,
    TrustStore,
    canonical_json,
    describe_blob,
    generate_keypair,
    key_id,
    load_private_key,
    pae,
    sign_manifest,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TINY_FLOAT = 5.7220458984375e-06  # 6 / 2**20: Python writes it "5.7220458984375e-06"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    return tmp_path / "a.key", tmp_path / "a.pub"


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    model = tmp_path / "model.onnx"
    model.write_bytes(bytes(range(256)) * 300)
    return Manifest(
        name="digits-cnn",
        version="1.2.3",
        created_at="2026-11-28T00:00:00+00:00",
        model=describe_blob(model, 64 * 1024),
        input={"name": "input", "shape": [None, 1, 28, 28]},
        preprocess={"width": 28, "height": 28, "color": "GRAY", "scale": TINY_FLOAT},
        postprocess={"labels": ("0", "1")},
        metrics={"scale": TINY_FLOAT, "big": 1e300, "note": "naïve ☃"},
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dsse(payload: bytes, private: Ed25519PrivateKey, kind: str = PAYLOAD_TYPE) -> dict[str, Any]:
    sig = private.sign(pae(kind, payload))
    entry = {"keyid": key_id(private.public_key()), "sig": b64(sig)}
    return {"payloadType": kind, "payload": b64(payload), "signatures": [entry]}


def v1(body: dict[str, Any], private: Ed25519PrivateKey) -> bytes:
    entry = {
        "key_id": key_id(private.public_key()),
        "alg": "ed25519",
        "sig": b64(private.sign(canonical_json(body))),
    }
    return canonical_json({"manifest": body, "signatures": [entry]})


def independent_verify(envelope: bytes, public_raw: bytes) -> dict[str, Any]:
    """DSSE as another implementation would read it: only base64, json and cryptography."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = json.loads(envelope)
    kind, payload = data["payloadType"].encode(), base64.b64decode(data["payload"])
    signed = b" ".join([b"DSSEv1", str(len(kind)).encode(), kind, str(len(payload)).encode()])
    signed += b" " + payload
    public = Ed25519PublicKey.from_public_bytes(public_raw)
    public.verify(base64.b64decode(data["signatures"][0]["sig"]), signed)  # raises if forged
    assert data["payloadType"] == "application/vnd.edgewise.manifest+json"
    return dict(json.loads(payload))


def test_pae_is_the_dsse_encoding() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t", b"") == b"DSSEv1 1 t 0 "


def test_a_dsse_envelope_verifies(manifest: Manifest, keys: tuple[Path, Path]) -> None:
    envelope = sign_manifest(manifest, load_private_key(keys[0]))
    data = json.loads(envelope)
    assert set(data) == {"payloadType", "payload", "signatures"}
    assert data["payloadType"] == PAYLOAD_TYPE == "application/vnd.edgewise.manifest+json"
    assert set(data["signatures"][0]) == {"keyid", "sig"}
    verified = TrustStore.from_files([keys[1]]).verify(envelope)
    assert verified.schema_version == 2
    assert verified == manifest.model_copy(update={"schema_version": 2})


def test_an_independent_verifier_agrees(manifest: Manifest, keys: tuple[Path, Path]) -> None:
    private = load_private_key(keys[0])
    envelope = sign_manifest(manifest, private)
    from cryptography.hazmat.primitives import serialization

    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert independent_verify(envelope, raw)["metrics"]["scale"] == TINY_FLOAT


@pytest.mark.parametrize("style", [{"indent": 2}, {"indent": None}, {"sort_keys": False}])
def test_reserialised_envelope_still_verifies(manifest, keys, style: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    envelope = sign_manifest(manifest, load_private_key(keys[0]))
    assert b"5.7220458984375e-06" in base64.b64decode(json.loads(envelope)["payload"])
    other = json.dumps(dict(reversed(json.loads(envelope).items())), **style).encode()
    assert other != envelope
    verified = TrustStore.from_files([keys[1]]).verify(other)
    assert verified.metrics["scale"] == TINY_FLOAT and verified.preprocess.scale == TINY_FLOAT


def test_a_payload_formatted_by_another_language_verifies(manifest, keys) -> None:  # type: ignore[no-untyped-def]
    """A signer that writes floats and spacing unlike Python: the bytes signed are the bytes
    read, so nothing needs to be re-serialised the same way."""
    text = json.dumps(manifest.to_dict(), indent=1).replace(
        "5.7220458984375e-06", "5.7220458984375E-6"
    )
    envelope = json.dumps(dsse(text.encode(), load_private_key(keys[0]))).encode()
    assert TrustStore.from_files([keys[1]]).verify(envelope).metrics["scale"] == TINY_FLOAT


def _one_line(exc: ContractError) -> str:
    message = str(exc)
    assert "\n" not in message and len(message) < 300, message
    return message


def forgeries(manifest: Manifest, keys: tuple[Path, Path], tmp_path: Path) -> dict[str, bytes]:
    private = load_private_key(keys[0])
    good = json.loads(sign_manifest(manifest, private))
    payload = bytearray(base64.b64decode(good["payload"]))
    payload[payload.index(b"1.2.3")] = ord("7")  # 7.2.3: still a valid manifest
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    rogue = dsse(bytes(base64.b64decode(good["payload"])), load_private_key(tmp_path / "rogue.key"))
    wrong_type = dsse(base64.b64decode(good["payload"]), private, "application/json")
    sig = good["signatures"][0]
    rows = {
        "payload one byte changed": {**good, "payload": b64(bytes(payload))},
        "wrong payloadType": wrong_type,
        "payloadType changed after signing": {**good, "payloadType": "application/vnd.x+json"},
        "untrusted key": rogue,
        "payload not base64": {**good, "payload": "%%% not base64 ***"},
        "sig not base64": {**good, "signatures": [{**sig, "sig": "@@@@"}]},
        "payload base64 of garbage": dsse(b"\xff\xfe garbage", private),
        "payload a JSON list": dsse(b"[1, 2]", private),
        "empty signatures": {**good, "signatures": []},
    }
    for field in ("payloadType", "payload", "signatures"):
        rows[f"no {field}"] = {k: v for k, v in good.items() if k != field}
    rows["no keyid"] = {**good, "signatures": [{"sig": sig["sig"]}]}
    rows["no sig"] = {**good, "signatures": [{"keyid": sig["keyid"]}]}
    return {name: json.dumps(doc).encode() for name, doc in rows.items()}


EXPECTED = {
    "payload one byte changed": "does not verify",
    "wrong payloadType": "payloadType is not application/vnd.edgewise.manifest+json",
    "payloadType changed after signing": "payloadType is not",
    "untrusted key": "untrusted key",
    "payload not base64": "payload is not base64",
    "sig not base64": "does not verify",
    "payload base64 of garbage": "signed payload is not a manifest: not UTF-8",
    "payload a JSON list": "not a JSON object",
    "empty signatures": "untrusted key(s) none",
    "no payloadType": "DSSE envelope without payloadType",
    "no payload": "DSSE envelope without payload",
    "no signatures": "DSSE envelope without signatures",
    "no keyid": "keyid and sig as strings",
    "no sig": "keyid and sig as strings",
}


def test_each_forgery_fails_with_one_clear_line(manifest, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    trust = TrustStore.from_files([keys[1]])
    rows = forgeries(manifest, keys, tmp_path)
    for name, envelope in rows.items():
        with pytest.raises(ContractError) as info:
            trust.verify(envelope)
        message = _one_line(info.value)
        assert EXPECTED[name] in message, (name, message)
    assert set(rows) == set(EXPECTED)


def test_a_v1_envelope_still_verifies(manifest: Manifest, keys: tuple[Path, Path]) -> None:
    old = manifest.model_copy(update={"schema_version": 1})
    envelope = v1(old.to_dict(), load_private_key(keys[0]))
    assert TrustStore.from_files([keys[1]]).verify(envelope) == old


def test_a_v1_envelope_changed_after_signing_fails(manifest, keys) -> None:  # type: ignore[no-untyped-def]
    body = manifest.model_copy(update={"schema_version": 1}).to_dict()
    data = json.loads(v1(body, load_private_key(keys[0])))
    data["manifest"]["version"] = "9.9.9"
    with pytest.raises(SignatureError, match="does not verify"):
        TrustStore.from_files([keys[1]]).verify(canonical_json(data))


def test_format_and_schema_version_go_together(manifest, keys) -> None:  # type: ignore[no-untyped-def]
    private, trust = load_private_key(keys[0]), TrustStore.from_files([keys[1]])
    with pytest.raises(ManifestError, match="v1 envelope cannot carry a schema_version 2"):
        trust.verify(v1(manifest.model_copy(update={"schema_version": 2}).to_dict(), private))
    body = manifest.model_copy(update={"schema_version": 1}).to_dict()
    with pytest.raises(ManifestError, match="v2 envelope cannot carry a schema_version 1"):
        trust.verify(json.dumps(dsse(canonical_json(body), private)).encode())


def test_a_v1_manifest_is_signed_again_as_v2(manifest, keys) -> None:  # type: ignore[no-untyped-def]
    old = manifest.model_copy(update={"schema_version": 1})
    envelope = sign_manifest(old, load_private_key(keys[0]))
    assert TrustStore.from_files([keys[1]]).verify(envelope).schema_version == 2
