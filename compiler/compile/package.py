"""Write a package: a folder with the model, its golden inputs and its signed manifest envelope.

NAME-VERSION/
    model.onnx
    golden.npz      inputs and the outputs the device must reproduce
    manifest.json   signed DSSE envelope, exactly the bytes sent on the wire

The type a package is read back as, and the reading, are the contract's
(``agent.contract.Package``, ``read_package``): one type on both sides.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.contract import (
    DEFAULT_CHUNK_SIZE,
    MANIFEST_FILE,
    AnySpec,
    ConstantSpec,
    InputSpec,
    Manifest,
    Package,
    StateSpec,
    describe_blob,
    load_private_key,
    sign_manifest,
)
from agent.contract.manifest import PostprocessSpec

GOLDEN = "golden.npz"


def write_package(
    out_dir: Path,
    model_path: Path,
    *,
    name: str,
    version: str,
    input_spec: InputSpec,
    preprocess: AnySpec,
    postprocess: PostprocessSpec,
    metrics: dict[str, Any],
    signing_key: Path,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    golden: Path | None = None,
    state: tuple[StateSpec, ...] = (),
    constants: tuple[ConstantSpec, ...] = (),
) -> Package:
    """``state`` and ``constants``: a recurrent model's carried state and fixed inputs
    (``edgewise vad``); a compiled classifier has neither."""
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
            state=state,
            constants=constants,
        )
        envelope = sign_manifest(manifest, load_private_key(signing_key))
        (staging / MANIFEST_FILE).write_bytes(envelope)
    except BaseException:  # a failed compile leaves nothing behind, not even the folder
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return Package(root, envelope, manifest)
