"""Installed packages on disk: an A/B pair of slots, and a quarantine.

    state_dir/models/{name}/{version}/   a slot: model, golden inputs, envelope.json
    state_dir/current  -> models/...      what boots; switched with an atomic rename
    state_dir/previous -> models/...      what a rollback returns to
    state_dir/incoming/{sha256}.part      the download in progress, and nothing else (resumable)
    state_dir/quarantine.json             packages that failed: never retried (the latest 256)

Every write is temp → fsync file → rename → fsync directory, so a power cut or ``kill -9`` at any
instant leaves the old or the new state, never a half-written one; a slot becomes ``current`` only
once it is complete on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.contract import (
    BlobSpec,
    ContractError,
    IntegrityError,
    Manifest,
    Package,
    TrustStore,
    canonical_json,
    sha256_file,
)

ENVELOPE = "envelope.json"
MAX_QUARANTINE = 256  # entries; the oldest go first (a replay of one is still refused by version)


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


def verified_folder(root: Path, envelope_file: str, trust: TrustStore) -> Package:
    """The package in ``root``, verified as an installed one is: the envelope's signature by a
    trusted key, then every file's size and sha256 (ContractError or OSError if not)."""
    envelope = (root / envelope_file).read_bytes()
    manifest = trust.verify(envelope)
    for blob in blobs_of(manifest):
        verify_blob(root / blob.path, blob)
    return Package(root, envelope, manifest)


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

    def stage(
        self,
        manifest: Manifest,
        envelope: bytes,
        files: dict[str, Path],
        notes: dict[str, str] | None = None,
    ) -> Path:
        """Move verified downloads (``blob path → file``) into their slot; not yet current.
        ``notes``: the device's own files beside the package (the backend the probe chose). A
        failure leaves no staging folder behind."""
        slot = self.slot_of(manifest)
        staging = slot.with_name(slot.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            for blob in blobs_of(manifest):
                source = files[blob.path]
                verify_blob(source, blob)
                with open(source, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(source, staging / blob.path)
            write_durably(staging / ENVELOPE, envelope)
            for name, text in (notes or {}).items():
                write_durably(staging / name, text.encode())
            fsync_dir(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if slot.exists() and not self._in_use(slot):
            shutil.rmtree(slot)
        if not slot.exists():
            os.replace(staging, slot)
            fsync_dir(slot.parent)
        else:
            shutil.rmtree(staging)  # the very same version is already installed and in use
        return slot

    def discard(self, slot: Path) -> None:
        """Remove a staged slot that failed, unless it is current or previous."""
        if not self._in_use(slot):
            shutil.rmtree(slot, ignore_errors=True)
            with contextlib.suppress(OSError):  # the package's folder, once it holds no version
                slot.parent.rmdir()

    def prune_incoming(self, keep: Iterable[BlobSpec] = ()) -> list[str]:
        """Delete every partial download but those of ``keep``; returns the names deleted."""
        wanted = {self.partial_path(blob).name for blob in keep}
        deleted = []
        for path in self.incoming.iterdir():
            if path.name not in wanted:
                path.unlink(missing_ok=True)
                deleted.append(path.name)
        return deleted

    def _in_use(self, slot: Path) -> bool:
        return slot.resolve() in (self._target("current"), self._target("previous"))

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

    def load(self, slot: Path, trust: TrustStore) -> Package:
        """A slot's package, re-verified: signature and every file's sha256."""
        return verified_folder(slot, ENVELOPE, trust)

    def linked(self, link: str) -> Path | None:
        """The slot ``current`` or ``previous`` points at, or None."""
        return self._target(link)

    def slots(self) -> list[Path]:
        """Every slot complete on disk (``models/{name}/{version}``), in order of the path. Safe
        beside a deployment in progress: a folder removed meanwhile is left out."""
        found = []
        for name_dir in self.models.iterdir():
            try:
                versions = list(name_dir.iterdir())
            except OSError:  # not a folder, or removed since it was listed
                continue
            found += [v for v in versions if v.is_dir() and not v.name.endswith(".staging")]
        return sorted(found)

    def bootable(self, trust: TrustStore) -> Iterator[tuple[str, Package | Exception]]:
        """``current``, then ``previous``, where they point at a slot: the link's name and its
        package re-verified, or why it does not verify."""
        for link in ("current", "previous"):
            slot = self._target(link)
            if slot is None:
                continue
            try:
                yield link, self.load(slot, trust)
            except (OSError, ValueError, ContractError) as exc:
                yield link, exc

    def current(self, trust: TrustStore) -> Package | None:
        """The model to boot: ``current`` re-verified, else ``previous``; None when neither."""
        errors = []
        for link, found in self.bootable(trust):
            if isinstance(found, Package):
                return found
            errors.append(f"{link}: {found}")
        if errors:
            raise IntegrityError("; ".join(errors))
        return None

    def installed(self, manifest: Manifest, trust: TrustStore) -> Package | None:
        """This exact package if a slot still holds it intact (e.g. for a rollback)."""
        slot = self.slot_of(manifest)
        try:
            installed = self.load(slot, trust)
        except (OSError, ValueError, ContractError):
            return None
        return installed if installed.manifest.model.sha256 == manifest.model.sha256 else None

    @staticmethod
    def _key(manifest: Manifest) -> str:
        """Name and version for a reader, and the sha256 of the whole canonical manifest: a
        corrected manifest with the same version (new labels, a new golden file) is a new
        package, not the quarantined one."""
        digest = hashlib.sha256(canonical_json(manifest.to_dict())).hexdigest()
        return f"{manifest.name}@{manifest.version}#{digest}"

    def quarantined(self, manifest: Manifest) -> str | None:
        """Why this package failed before, or None."""
        return self._read_quarantine().get(self._key(manifest))

    def quarantine(self, manifest: Manifest, reason: str) -> None:
        entries = self._read_quarantine()
        key = self._key(manifest)
        entries.pop(key, None)  # the newest goes last, so the oldest is evicted first
        entries[key] = reason
        while len(entries) > MAX_QUARANTINE:
            del entries[next(iter(entries))]
        write_durably(self._quarantine, json.dumps(entries, indent=1).encode())

    def quarantine_list(self) -> list[dict[str, str]]:
        """Each quarantined package's name, version and why, the oldest first."""
        listed = []
        for key, reason in self._read_quarantine().items():
            name, _, rest = key.partition("@")
            listed.append({"name": name, "version": rest.rpartition("#")[0], "reason": reason})
        return listed

    def _read_quarantine(self) -> dict[str, str]:
        try:
            entries = json.loads(self._quarantine.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(entries, dict):
            return {}
        return {str(k): str(v) for k, v in entries.items()}
