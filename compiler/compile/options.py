"""What ``compile_model`` is asked to do, and the signing key checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.contract import load_private_key as _load_private_key
from agent.contract.manifest import PostprocessSpec

from ..errors import BadData, CompilerError
from .kernels import RoundTo
from .quantize import Calibration, Target


@dataclass(frozen=True)
class CompileOptions:
    name: str
    version: str
    signing_key: Path
    out_dir: Path
    max_accuracy_drop: float = 1.0  # top-1 points below fp32
    calibration_samples: int = 256
    calibration: Calibration = "minmax"
    target: Target | None = None
    chunk_size: int = 128 * 1024
    prune_ratio: float | None = None  # share of channels removed per layer
    target_macs: float | None = None  # or: prune until MACs are this fraction of the original
    prune_auto: bool = False  # or: the most pruning whose int8 model keeps the budget
    max_latency_ms: float | None = None  # --prune auto: and whose int8 p50 (1 thread) is within
    round_to: RoundTo = 8  # pruning keeps multiples of this; auto: what int8 kernels run fast
    recovery_epochs: int = 3
    recovery_lr: float = 5e-4
    golden_count: int = 4
    output: str | None = None  # the ONNX output the package serves; None: the first
    # how the package reads the model's output; None: top-1 classification over the data's labels
    postprocess: PostprocessSpec | None = None
    progress: bool = True
    html: bool = True
    # the package to compare with; None: the highest earlier version of the name in out_dir
    previous: Path | None = None


def check_signing_key(path: Path) -> None:
    """Fail before any work when the key cannot sign."""
    try:
        _load_private_key(path)
    except (OSError, ValueError, TypeError, CompilerError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadData(f"signing key {path}: {reason}") from exc
    except Exception as exc:  # cryptography's errors for non-PEM bytes
        raise BadData(f"signing key {path}: not an Ed25519 private key (PEM)") from exc
