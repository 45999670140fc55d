"""ModelStore: A/B slots switched atomically, re-verified at boot, and a quarantine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from device_harness import install
from forge import package_from

from agent.contract import IntegrityError, TrustStore
from agent.delivery.store import ModelStore


def trust(keys) -> TrustStore:  # type: ignore[no-untyped-def]
    return TrustStore.from_files([keys[1]])


def test_install_then_current(compiled, signing_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    install(compiled.package, tmp_path / "state")
    store = ModelStore(tmp_path / "state")
    installed = store.current(trust(signing_keys))
    assert installed is not None and installed.manifest == compiled.package.manifest
    assert installed.golden_path is not None and installed.golden_path.exists()
    assert not any(store.incoming.iterdir()), "downloads are moved into the slot, not copied"
    assert not list(store.root.glob("*.tmp")) and not list(store.models.rglob("*.staging"))


def test_a_b_switch_keeps_one_previous_slot(compiled, signing_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    versions = ["1.0.0", "1.1.0", "1.2.0"]
    for version in versions:
        package = package_from(
            compiled.package, tmp_path / version, signing_keys[0], version=version
        )
        install(package, state)
    assert os.readlink(state / "current").endswith("1.2.0")
    assert os.readlink(state / "previous").endswith("1.1.0")
    assert sorted(p.name for p in (state / "models" / "digits-cnn").iterdir()) == ["1.1.0", "1.2.0"]
    store = ModelStore(state)
    assert store.revert() is not None
    assert store.current(trust(signing_keys)).manifest.version == "1.1.0"  # type: ignore[union-attr]
    assert not (state / "previous").exists()


def test_tampered_current_falls_back_to_previous(compiled, signing_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    install(compiled.package, state)
    newer = package_from(compiled.package, tmp_path / "p", signing_keys[0], version="1.1.0")
    install(newer, state)
    model = state / "current" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    installed = ModelStore(state).current(trust(signing_keys))
    assert installed is not None and installed.manifest.version == "1.0.0"


def test_nothing_verifiable_is_an_error_not_a_partial_model(
    compiled, signing_keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    install(compiled.package, state)
    (state / "current" / "model.onnx").write_bytes(b"partial")
    with pytest.raises(IntegrityError, match="current"):
        ModelStore(state).current(trust(signing_keys))


def test_stage_refuses_a_body_that_does_not_match(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "state")
    manifest = compiled.package.manifest
    files = {}
    for blob, path in compiled.package.blobs():
        files[blob.path] = store.partial_path(blob)
        shutil.copyfile(path, files[blob.path])
    files[manifest.model.path].write_bytes(b"\0" * manifest.model.size)
    with pytest.raises(IntegrityError, match="sha256"):
        store.stage(manifest, compiled.package.envelope, files)
    assert not (store.root / "current").exists()


def test_quarantine_survives_a_new_store(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = compiled.package.manifest
    ModelStore(tmp_path / "state").quarantine(manifest, "golden outputs differ")
    assert ModelStore(tmp_path / "state").quarantined(manifest) == "golden outputs differ"
    other = manifest.model_copy(update={"version": "9.9.9"})
    assert ModelStore(tmp_path / "state").quarantined(other) is None
