"""Labelled images for calibration, fine-tuning and evaluation: an image folder (one sub-folder
per label) or an ``.npz`` with ``x`` and ``y`` (and optionally ``labels``). The bundled digits
are the recipe's (``compiler.recipe.digits``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.contract import PreprocessSpec

from ..errors import InputError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
)


class DataError(InputError):
    """Calibration or evaluation data is missing, empty or does not fit the model."""


@dataclass(frozen=True)
class Split:
    """uint8 images (an array N×H×W[×C], or a list when sizes differ) and integer labels."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    train: Split  # calibration and fine-tuning
    test: Split  # held out: evaluation only
    labels: tuple[str, ...]
    preprocess: PreprocessSpec | None = None  # the spec the source implies, if any


def stratified_split(data: Split, seed: int, test_fraction: float) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(data.labels)
    stratify = data.labels if counts[counts > 0].min() >= 2 else None
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.images, data.labels, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return Split(x_tr, np.asarray(y_tr)), Split(x_te, np.asarray(y_te))


def _from_folder(root: Path) -> tuple[Split, tuple[str, ...]]:
    labels = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not labels:
        raise DataError(f"{root}: no label sub-folders (expected {root}/<label>/<image>)")
    images, targets = [], []
    for index, label in enumerate(labels):
        for path in sorted((root / label).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"{path}: not a readable image")
            images.append(image)
            targets.append(index)
    if not images:
        raise DataError(f"{root}: the label folders hold no images")
    return Split(images, np.asarray(targets, np.int64)), labels  # type: ignore[arg-type]


def _from_npz(path: Path) -> tuple[Split, tuple[str, ...]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
            names = tuple(str(s) for s in data["labels"]) if "labels" in data else None
    except KeyError as exc:
        raise DataError(f"{path}: needs arrays 'x' (images) and 'y' (integer labels)") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz: {exc}") from exc
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(
            f"{path}: 'x' must be uint8 images N×H×W or N×H×W×C, got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    if len(x) == 0:
        raise DataError(f"{path}: holds no images")
    labels = names or tuple(str(i) for i in range(int(y.max()) + 1))
    if y.min() < 0 or y.max() >= len(labels):
        raise DataError(f"{path}: labels in 'y' must lie in 0..{len(labels) - 1}")
    return Split(x, y.astype(np.int64)), labels


def read_files(path: Path) -> tuple[Split, tuple[str, ...]] | None:
    """A folder of ``<label>/<image>`` files or an ``.npz``, with its label names; None when
    ``path`` is neither."""
    if path.is_dir():
        return _from_folder(path)
    if path.suffix == ".npz" and path.is_file():
        return _from_npz(path)
    return None


def split_dataset(
    source: str,
    data: Split,
    labels: tuple[str, ...],
    spec: PreprocessSpec | None,
    *,
    seed: int,
    test_fraction: float,
) -> Dataset:
    """``data`` split into training and held-out images, stratified and seeded."""
    if len(data.labels) < 2:
        raise DataError(f"{source}: needs at least 2 images to hold some out for evaluation")
    train, test = stratified_split(data, seed, test_fraction)
    return Dataset(train, test, labels, spec)
