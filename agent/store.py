"""Installed packages on disk: an A/B pair of slots, and a quarantine.

    state_dir/models/{name}/{version}/   a slot: model, golden inputs, envelope.json
    state_dir/current  -> models/...      what boots; switched with an atomic rename
    state_dir/previous -> models/...      what a rollback returns to
    state_dir/incoming/{sha256}.part      downloads in progress (resumable)
    state_dir/quarantine.json             versions that failed: never retried

Every write is temp → fsync file → rename → fsync directory, so a power cut or ``kill -9`` at any
instant leaves the old or the new state, never a half-written one; a slot becomes ``current`` only
once it is complete on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .contract import BlobSpec, ContractError, IntegrityError, Manifest, TrustStore, sha256_file

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


def verify_blob(path: Path, blob: BlobSpec) -> None:
    size = path.stat().st_size
    if size != blob.size:
        raise IntegrityError(f"{blob.path}: {size} bytes, manifest declares {blob.size}")
    digest = sha256_file(path)
    if digest != blob.sha256:
        raise IntegrityError(f"{blob.path}: sha256 {digest} != manifest {blob.sha256}")


def blobs_of(manifest: Manifest) -> list[BlobSpec]:
    return [manifest.model] + ([manifest.golden] if manifest.golden else [])


@dataclass(frozen=True)
class InstalledModel:
    manifest: Manifest
    envelope: bytes
    slot: Path

    @property
    def model_path(self) -> Path:
        return self.slot / self.manifest.model.path

    @property
    def golden_path(self) -> Path | None:
        return self.slot / self.manifest.golden.path if self.manifest.golden else None


class ModelStore:
    def __init__(self, state_dir: Path):
        self.root = Path(state_dir)
        self.models = self.root / "models"
        self.incoming = self.root / "incoming"
        self._quarantine = self.root / "quarantine.json"
        for d in (self.models, self.incoming):
            d.mkdir(parents=True, exist_ok=True)

    def partial_path(self, blob: BlobSpec) -> Path:
        return self.incoming / f"{blob.sha256}.part"

    def slot_of(self, manifest: Manifest) -> Path:
        return self.models / manifest.name / manifest.version

    def stage(self, manifest: Manifest, envelope: bytes, files: dict[str, Path]) -> Path:
        """Move verified downloads (``blob path → file``) into their slot; not yet current."""
        slot = self.slot_of(manifest)
        staging = slot.with_name(slot.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for blob in blobs_of(manifest):
            source = files[blob.path]
            verify_blob(source, blob)
            with open(source, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(source, staging / blob.path)
        write_durably(staging / ENVELOPE, envelope)
        fsync_dir(staging)
        if slot.exists() and slot not in (self._target("current"), self._target("previous")):
            shutil.rmtree(slot)
        if not slot.exists():
            os.replace(staging, slot)
            fsync_dir(slot.parent)
        else:
            shutil.rmtree(staging)  # the very same version is already installed and in use
        return slot

    def activate(self, slot: Path) -> None:
        """Make ``slot`` current, the old current previous, and drop every other slot."""
        current = self._target("current")
        if current == slot:
            return
        if current is not None:
            self._point("previous", current)
        self._point("current", slot)
        keep = {slot, current}
        for name_dir in self.models.iterdir():
            for version_dir in name_dir.iterdir():
                if version_dir not in keep and not version_dir.name.endswith(".staging"):
                    shutil.rmtree(version_dir, ignore_errors=True)

    def revert(self) -> Path | None:
        """Make ``previous`` current again (rollback); returns it, or None if there is none."""
        previous = self._target("previous")
        if previous is None:
            return None
        self._point("current", previous)
        (self.root / "previous").unlink(missing_ok=True)
        fsync_dir(self.root)
        return previous

    def _target(self, link: str) -> Path | None:
        path = self.root / link
        return path.resolve() if path.is_symlink() and path.exists() else None

    def _point(self, link: str, slot: Path) -> None:
        tmp = self.root / f"{link}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(slot.relative_to(self.root))
        os.replace(tmp, self.root / link)
        fsync_dir(self.root)

    def load(self, slot: Path, trust: TrustStore) -> InstalledModel:
        """A slot's package, re-verified: signature and every file's sha256."""
        envelope = (slot / ENVELOPE).read_bytes()
        manifest = trust.verify(envelope)
        for blob in blobs_of(manifest):
            verify_blob(slot / blob.path, blob)
        return InstalledModel(manifest, envelope, slot)

    def current(self, trust: TrustStore) -> InstalledModel | None:
        """The model to boot: ``current`` re-verified, else ``previous``; None when neither."""
        errors = []
        for link in ("current", "previous"):
            slot = self._target(link)
            if slot is None:
                continue
            try:
                return self.load(slot, trust)
            except (OSError, ValueError, ContractError) as exc:
                errors.append(f"{link}: {exc}")
        if errors:
            raise IntegrityError("; ".join(errors))
        return None

    def installed(self, manifest: Manifest, trust: TrustStore) -> InstalledModel | None:
        """This exact package if a slot still holds it intact (e.g. for a rollback)."""
        slot = self.slot_of(manifest)
        try:
            installed = self.load(slot, trust)
        except (OSError, ValueError, ContractError):
            return None
        return installed if installed.manifest.model.sha256 == manifest.model.sha256 else None

    @staticmethod
    def _key(manifest: Manifest) -> str:
        return f"{manifest.name}@{manifest.version}#{manifest.model.sha256[:16]}"

    def quarantined(self, manifest: Manifest) -> str | None:
        """Why this package failed before, or None."""
        return self._read_quarantine().get(self._key(manifest))

    def quarantine(self, manifest: Manifest, reason: str) -> None:
        entries = self._read_quarantine()
        entries[self._key(manifest)] = reason
        write_durably(self._quarantine, json.dumps(entries, indent=1).encode())

    def _read_quarantine(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._quarantine.read_text()))
        except (OSError, ValueError):
            return {}
