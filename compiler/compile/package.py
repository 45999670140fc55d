"""A package on disk: a folder with the model and its signed manifest envelope.

NAME-VERSION/
    model.onnx
    manifest.json   signed envelope, exactly the bytes sent on the wire
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.contract import (
    DEFAULT_CHUNK_SIZE,
    BlobSpec,
    ClassificationSpec,
    InputSpec,
    Manifest,
    ManifestError,
    PreprocessSpec,
    describe_blob,
    load_private_key,
    sign_manifest,
)

ENVELOPE = "manifest.json"
GOLDEN = "golden.npz"


@dataclass(frozen=True)
class Package:
    root: Path
    envelope: bytes
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model.path

    def blobs(self) -> list[tuple[BlobSpec, Path]]:
        """Every file that travels with the package, and where it lies."""
        files = [(self.manifest.model, self.model_path)]
        if self.manifest.golden is not None:
            files.append((self.manifest.golden, self.root / self.manifest.golden.path))
        return files


def write_package(
    out_dir: Path,
    model_path: Path,
    *,
    name: str,
    version: str,
    input_spec: InputSpec,
    preprocess: PreprocessSpec,
    postprocess: ClassificationSpec,
    metrics: dict[str, Any],
    signing_key: Path,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    golden: Path | None = None,
) -> Package:
    root = Path(out_dir) / f"{name}-{version}"
    staging = root.with_name(root.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    created = not Path(out_dir).exists()
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(model_path, staging / "model.onnx")
        if golden is not None:
            shutil.copyfile(golden, staging / GOLDEN)
        manifest = Manifest(
            name=name,
            version=version,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            model=describe_blob(staging / "model.onnx", chunk_size),
            input=input_spec,
            preprocess=preprocess,
            postprocess=postprocess,
            metrics=metrics,
            golden=describe_blob(staging / GOLDEN, chunk_size) if golden is not None else None,
        )
        envelope = sign_manifest(manifest, load_private_key(signing_key))
        (staging / ENVELOPE).write_bytes(envelope)
    except BaseException:  # a failed compile leaves nothing behind, not even the folder
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return Package(root, envelope, manifest)


def read_package(root: Path) -> Package:
    """Read a package folder (no signature check: the device does that)."""
    root = Path(root)
    try:
        envelope = (root / ENVELOPE).read_bytes()
        manifest = Manifest.from_dict(json.loads(envelope)["manifest"])
    except (OSError, ValueError, KeyError) as exc:
        raise ManifestError(f"{root}: not a package: {exc}") from exc
    return Package(root, envelope, manifest)
