"""A package: a signed manifest envelope and the files it names, in one folder.

Both sides use this one type: the compiler writes a package folder (``manifest.json`` beside the
model), the device keeps each installed package in a slot (``envelope.json`` beside the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.contract.envelope import open_envelope
from agent.contract.errors import ContractError, ManifestError
from agent.contract.manifest import BlobSpec, Manifest

MANIFEST_FILE = "manifest.json"  # a package folder's envelope, exactly the bytes sent on the wire


@dataclass(frozen=True)
class Package:
    root: Path
    envelope: bytes
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model.path

    @property
    def golden_path(self) -> Path | None:
        golden = self.manifest.golden
        return self.root / golden.path if golden else None

    def blobs(self) -> list[tuple[BlobSpec, Path]]:
        """Every file that travels with the package, and where it lies."""
        files = [(self.manifest.model, self.model_path)]
        if self.manifest.golden is not None:
            files.append((self.manifest.golden, self.root / self.manifest.golden.path))
        return files


def read_package(root: Path) -> Package:
    """A package folder as written, its envelope DSSE or v1 (no signature check: a device
    verifies what it installs)."""
    root = Path(root)
    try:
        envelope = (root / MANIFEST_FILE).read_bytes()
        manifest = Manifest.from_dict(open_envelope(envelope).manifest_body())
    except (OSError, ValueError, KeyError, TypeError, ContractError) as exc:
        raise ManifestError(f"{root}: not a package: {exc}") from exc
    return Package(root, envelope, manifest)
