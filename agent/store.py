"""Installed packages on disk, and which one is current.

    state_dir/models/{name}/{version}/model.onnx   verified model body
    state_dir/models/{name}/{version}/envelope.json signed manifest as received
    state_dir/current -> models/{name}/{version}   switched with an atomic rename
    state_dir/incoming/{sha256}.part               a download in progress

Every write is temp → fsync → rename → fsync(dir), so a power cut leaves either the old or the
new state, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .contract import IntegrityError, Manifest, TrustStore, sha256_file

ENVELOPE = "envelope.json"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def verify_model_file(path: Path, manifest: Manifest) -> None:
    size = path.stat().st_size
    if size != manifest.model.size:
        raise IntegrityError(f"{path.name}: {size} bytes, manifest declares {manifest.model.size}")
    digest = sha256_file(path)
    if digest != manifest.model.sha256:
        raise IntegrityError(f"{path.name}: sha256 {digest} != manifest {manifest.model.sha256}")


@dataclass(frozen=True)
class InstalledModel:
    manifest: Manifest
    envelope: bytes
    model_path: Path


class ModelStore:
    def __init__(self, state_dir: Path):
        self.root = Path(state_dir)
        self.models = self.root / "models"
        self.incoming = self.root / "incoming"
        self._current = self.root / "current"
        for d in (self.models, self.incoming):
            d.mkdir(parents=True, exist_ok=True)

    def partial_path(self, manifest: Manifest) -> Path:
        return self.incoming / f"{manifest.model.sha256}.part"

    def install(self, manifest: Manifest, envelope: bytes, body: Path) -> InstalledModel:
        """Move a verified download into its slot and make it current."""
        verify_model_file(body, manifest)
        with open(body, "rb+") as fh:
            os.fsync(fh.fileno())
        slot = self.models / manifest.name / manifest.version
        staging = slot.with_name(slot.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        os.replace(body, staging / manifest.model.path)
        write_durably(staging / ENVELOPE, envelope)
        fsync_dir(staging)
        shutil.rmtree(slot, ignore_errors=True)
        os.replace(staging, slot)
        fsync_dir(slot.parent)
        self._point_current_at(slot)
        return InstalledModel(manifest, envelope, slot / manifest.model.path)

    def _point_current_at(self, slot: Path) -> None:
        tmp = self.root / "current.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(slot.relative_to(self.root))
        os.replace(tmp, self._current)
        fsync_dir(self.root)

    def current(self, trust: TrustStore) -> InstalledModel | None:
        """The current model, re-verified (signature and sha256); None when nothing is installed."""
        if not self._current.exists():
            return None
        slot = self._current.resolve()
        envelope = (slot / ENVELOPE).read_bytes()
        manifest = trust.verify(envelope)
        model_path = slot / manifest.model.path
        verify_model_file(model_path, manifest)
        return InstalledModel(manifest, envelope, model_path)
