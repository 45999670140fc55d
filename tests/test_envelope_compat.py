"""What the compiler writes is DSSE another implementation can verify; packages and device slots
written before DSSE (v1 envelopes, schema version 1) are still read and still boot."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from device_harness import install
from forge import package_from, sign_v1

from agent.contract import MANIFEST_FILE, Package, TrustStore, read_package
from agent.delivery.store import ModelStore
from compiler.fleet.push import deployment_envelope


def independent_verify(envelope: bytes, public_pem: bytes) -> dict:  # type: ignore[type-arg]
    """DSSE checked with base64, json and cryptography only: PAE computed here."""
    public = load_pem_public_key(public_pem)
    assert isinstance(public, Ed25519PublicKey)
    data = json.loads(envelope)
    kind, payload = data["payloadType"].encode(), base64.b64decode(data["payload"])
    signed = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)
    public.verify(base64.b64decode(data["signatures"][0]["sig"]), signed)
    assert kind == b"application/vnd.edgewise.manifest+json"
    return dict(json.loads(payload))


def test_the_compiled_envelope_verifies_independently(compiled, signing_keys) -> None:  # type: ignore[no-untyped-def]
    envelope = (compiled.package.root / MANIFEST_FILE).read_bytes()
    body = independent_verify(envelope, signing_keys[1].read_bytes())
    assert body["schema_version"] == 2 and body["name"] == compiled.package.manifest.name
    assert read_package(compiled.package.root).manifest == compiled.package.manifest


def test_a_signed_rollback_is_dsse(compiled, signing_keys) -> None:  # type: ignore[no-untyped-def]
    envelope = deployment_envelope(compiled.package, "device:cam-1", signing_keys[0], True)
    body = independent_verify(envelope, signing_keys[1].read_bytes())
    assert body["rollback"] is True and body["target"] == "device:cam-1"
    assert TrustStore.from_files([signing_keys[1]]).verify(envelope).rollback


def v1_package(compiled, signing_keys, out: Path, version: str) -> Package:  # type: ignore[no-untyped-def]
    """A package folder as the compiler wrote it before DSSE."""
    package = package_from(compiled.package, out, signing_keys[0], version=version)
    manifest = package.manifest.model_copy(update={"schema_version": 1})
    envelope = sign_v1(manifest, signing_keys[0])
    (package.root / MANIFEST_FILE).write_bytes(envelope)
    return Package(package.root, envelope, manifest)


def test_a_v1_package_folder_is_still_read(compiled, signing_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    old = v1_package(compiled, signing_keys, tmp_path / "old", "1.0.1")
    assert b'"manifest"' in (old.root / MANIFEST_FILE).read_bytes()
    read = read_package(old.root)
    assert read.manifest.schema_version == 1 and read.manifest == old.manifest
    # Pushed again with a key (a rollback, a target): signed anew as DSSE, schema version 2.
    envelope = deployment_envelope(read, "all", signing_keys[0], True)
    assert TrustStore.from_files([signing_keys[1]]).verify(envelope).schema_version == 2


@pytest.mark.parametrize("newer", [False, True])
def test_an_installed_v1_slot_still_boots(compiled, signing_keys, tmp_path, newer) -> None:  # type: ignore[no-untyped-def]
    state, trust = tmp_path / "state", TrustStore.from_files([signing_keys[1]])
    old = v1_package(compiled, signing_keys, tmp_path / "old", "1.0.1")
    install(old, state)
    assert b'"manifest"' in (state / "current" / "envelope.json").read_bytes()
    if newer:  # a DSSE package installed over it: v1 becomes previous, and boots as the fallback
        install(
            package_from(compiled.package, tmp_path / "new", signing_keys[0], version="1.1.0"),
            state,
        )
        assert ModelStore(state).current(trust).manifest.schema_version == 2  # type: ignore[union-attr]
        shutil.rmtree(state / "models" / "digits-cnn" / "1.1.0")
    booted = ModelStore(state).current(trust)
    assert booted is not None and booted.manifest == old.manifest
    assert booted.manifest.schema_version == 1 and booted.envelope == old.envelope
