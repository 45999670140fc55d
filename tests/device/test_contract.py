"""The wire contract: topics, manifest schema, canonical JSON and Ed25519 signatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from agent.contract import (
    IntegrityError,
    Manifest,
    ManifestError,
    PreprocessSpec,
    SignatureError,
    Topics,
    TrustStore,
    canonical_json,
    describe_blob,
    dot_problem,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_manifest,
)
from agent.delivery.store import verify_blob

# The digits model's contract as the recipe writes it (here: contract tests need no compiler)
LABELS = tuple(str(d) for d in range(10))
PREPROCESS = PreprocessSpec(
    width=28, height=28, color="GRAY", scale=1 / 255, mean=(0.1307,), std=(0.3081,)
)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(range(256)) * 1000)  # 256,000 bytes: 4 chunks of 64 KiB
    return path


@pytest.fixture
def manifest(model_file: Path) -> Manifest:
    return Manifest(
        name="digits-cnn",
        version="1.2.3",
        created_at="2026-11-28T00:00:00+00:00",
        model=describe_blob(model_file, 64 * 1024),
        input={"name": "input", "shape": [None, 1, 28, 28]},
        preprocess=PREPROCESS,
        postprocess={"labels": LABELS},
        metrics={"int8_accuracy": 0.98},
    )


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    return tmp_path / "a.key", tmp_path / "a.pub"


def test_sign_verify_round_trip(manifest: Manifest, keys: tuple[Path, Path]) -> None:
    envelope = sign_manifest(manifest, load_private_key(keys[0]))
    assert TrustStore.from_files([keys[1]]).verify(envelope) == manifest


def test_envelope_is_canonical_json(manifest: Manifest, keys: tuple[Path, Path]) -> None:
    envelope = sign_manifest(manifest, load_private_key(keys[0]))
    assert canonical_json(json.loads(envelope)) == envelope


def test_private_key_is_owner_only(keys: tuple[Path, Path]) -> None:
    assert keys[0].stat().st_mode & 0o777 == 0o600


def _payload(envelope: bytes) -> bytes:
    return base64.b64decode(json.loads(envelope)["payload"])


def _with_payload(envelope: bytes, payload: bytes) -> bytes:
    return canonical_json({**json.loads(envelope), "payload": base64.b64encode(payload).decode()})


@pytest.mark.parametrize("offset", [40, 200, -60])
def test_one_byte_change_in_manifest_fails(manifest, keys, offset: int) -> None:  # type: ignore[no-untyped-def]
    envelope = sign_manifest(manifest, load_private_key(keys[0]))
    payload = bytearray(_payload(envelope))
    index = offset if offset > 0 else len(payload) + offset
    # Swap one digit or letter for another so the JSON still parses.
    payload[index] = ord("1") if payload[index] != ord("1") else ord("2")
    with pytest.raises(SignatureError, match="does not verify"):
        TrustStore.from_files([keys[1]]).verify(_with_payload(envelope, bytes(payload)))


def test_changed_value_fails_signature(manifest, keys) -> None:  # type: ignore[no-untyped-def]
    envelope = sign_manifest(manifest, load_private_key(keys[0]))
    body = json.loads(_payload(envelope))
    body["version"] = "9.9.9"
    with pytest.raises(SignatureError, match="does not verify"):
        TrustStore.from_files([keys[1]]).verify(_with_payload(envelope, canonical_json(body)))


def test_untrusted_key_is_rejected_by_name(manifest, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    envelope = sign_manifest(manifest, load_private_key(tmp_path / "rogue.key"))
    trust = TrustStore.from_files([keys[1]])
    with pytest.raises(SignatureError, match="untrusted key") as info:
        trust.verify(envelope)
    assert trust.key_ids[0] in str(info.value)


def test_any_trusted_key_of_several_verifies(manifest, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    generate_keypair(tmp_path / "new.key", tmp_path / "new.pub")
    envelope = sign_manifest(manifest, load_private_key(tmp_path / "new.key"))
    trust = TrustStore([load_public_key(keys[1]), load_public_key(tmp_path / "new.pub")])
    assert trust.verify(envelope).version == "1.2.3"


def test_one_byte_change_in_model_fails(manifest: Manifest, model_file: Path) -> None:
    verify_blob(model_file, manifest.model)
    data = bytearray(model_file.read_bytes())
    data[1234] ^= 0x01
    model_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        verify_blob(model_file, manifest.model)


def test_truncated_model_fails_size(manifest: Manifest, model_file: Path) -> None:
    model_file.write_bytes(model_file.read_bytes()[:-1])
    with pytest.raises(IntegrityError, match="bytes"):
        verify_blob(model_file, manifest.model)


def test_manifest_errors_name_the_field(manifest: Manifest) -> None:
    data = manifest.to_dict()
    with pytest.raises(ManifestError, match="version"):
        Manifest.from_dict({**data, "version": "1.2"})
    with pytest.raises(ManifestError, match="surprise"):
        Manifest.from_dict({**data, "surprise": 1})
    with pytest.raises(ManifestError, match="chunk"):
        Manifest.from_dict(
            {**data, "model": {**data["model"], "chunks": data["model"]["chunks"][:1]}}
        )


def test_malformed_envelope_is_a_manifest_error(keys: tuple[Path, Path]) -> None:
    trust = TrustStore.from_files([keys[1]])
    for payload in (b"not json", b"{}", b'{"manifest": [], "signatures": []}'):
        with pytest.raises(ManifestError, match="envelope"):
            trust.verify(payload)


def test_topics_are_built_in_one_place() -> None:
    topics = Topics("edgewise")
    assert topics.deploy_device("cam-1") == "edgewise/v1/deploy/device/cam-1"
    assert topics.deploy_group("lobby") == "edgewise/v1/deploy/group/lobby"
    assert topics.deploy_all() == "edgewise/v1/deploy/all"
    assert topics.results("cam-1") == "edgewise/v1/devices/cam-1/results"
    assert topics.blob_chunk("ab" * 32, 3) == f"edgewise/v1/blobs/{'ab' * 32}/3"
    assert topics.device_of(topics.status("cam-1")) == "cam-1"
    with pytest.raises(ValueError, match="device id"):
        topics.results("cam/+")
    with pytest.raises(ValueError, match="every broker"):  # RabbitMQ rewrites '.', NATS refuses it
        topics.deploy("device:cam.1")
    assert dot_problem("cam.1", "device") == (
        "'cam.1' contains '.', which RabbitMQ and NATS cannot carry in a topic; "
        "rename the device (e.g. 'cam-1')"
    )
    assert dot_problem("cam-1", "device") is None


@pytest.mark.parametrize(("delivery", "cap", "refused"), [
    ("retained", 64 * 1024, True), ("request", 64 * 1024, True), ("http", 64 * 1024, False),
    ("retained", 128 * 1024, False), ("request", 128 * 1024, False),
])  # fmt: skip
def test_chunks_over_the_devices_packet_cap_are_refused_before_any_is_asked_for(
    manifest: Manifest, delivery: str, cap: int, refused: bool
) -> None:
    from agent.delivery.admission import check_packets
    from agent.errors import DeployError

    topics = Topics()
    topic = (
        (lambda b: topics.inbox_chunk("cam-1", b.sha256, len(b.chunks) - 1))
        if delivery == "request"
        else (lambda b: topics.blob_chunk(b.sha256, len(b.chunks) - 1))
    )
    over = manifest.model_copy(update={"delivery": delivery})  # 64 KiB chunks
    if not refused:
        check_packets(over, cap, topic)
        return
    with pytest.raises(DeployError, match=r"65536-byte chunks, over the .* push it in smaller"):
        check_packets(over, cap, topic)
