"""ModelStore: installs atomically and re-verifies what it serves after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.contract import IntegrityError, TrustStore
from agent.store import ModelStore


def _install(compiled, tmp_path: Path) -> ModelStore:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "state")
    package = compiled.package
    partial = store.partial_path(package.manifest)
    partial.write_bytes(package.model_path.read_bytes())
    store.install(package.manifest, package.envelope, partial)
    return store


def test_install_then_current(compiled, signing_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = _install(compiled, tmp_path)
    installed = store.current(TrustStore.from_files([signing_keys[1]]))
    assert installed is not None and installed.manifest == compiled.package.manifest
    assert not any(store.incoming.iterdir()), "the download was moved, not copied"
    assert not list(store.root.glob("*.tmp")) and not list(store.models.rglob("*.staging"))


def test_tampered_installed_model_is_not_served(compiled, signing_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = _install(compiled, tmp_path)
    installed = store.current(TrustStore.from_files([signing_keys[1]]))
    assert installed is not None
    data = bytearray(installed.model_path.read_bytes())
    data[-10] ^= 0xFF
    installed.model_path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.current(TrustStore.from_files([signing_keys[1]]))


def test_install_refuses_a_body_that_does_not_match(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "state")
    partial = store.partial_path(compiled.package.manifest)
    partial.write_bytes(b"\0" * compiled.package.manifest.model.size)
    with pytest.raises(IntegrityError, match="sha256"):
        store.install(compiled.package.manifest, compiled.package.envelope, partial)
    assert not (store.root / "current").exists()
