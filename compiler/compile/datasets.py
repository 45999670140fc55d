"""Labelled samples for calibration, fine-tuning and evaluation: an image folder (one sub-folder
per label) or an ``.npz`` with ``x`` and ``y`` (and optionally ``labels``, and ``split`` naming
each row ``train`` or ``test`` when the held-out rows are chosen, e.g. by speaker). ``x`` holds
uint8 images, or float32 windows (audio: N × samples; sensors: N × window × channels). The
bundled digits are the recipe's (``compiler.recipe.digits``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.contract import AnySpec, LogMelSpec, SensorSpec, WaveformSpec, clip
from agent.contract.manifest import PostprocessSpec

from ..errors import BadData

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
)


class DataError(BadData):
    """Calibration or evaluation data is missing, empty or does not fit the model."""


@dataclass(frozen=True)
class Split:
    """uint8 images (an array N×H×W[×C], or a list when sizes differ) or float32 windows, and
    integer labels."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    train: Split  # calibration and fine-tuning
    test: Split  # held out: evaluation only
    labels: tuple[str, ...]
    preprocess: AnySpec | None = None  # the spec the source implies, if any


@dataclass(frozen=True)
class Files:
    """What a folder or an .npz holds: the samples, label names, and which rows are held out
    when the file says so (its ``split``)."""

    data: Split
    labels: tuple[str, ...]
    held_out: np.ndarray | None = None  # bool per row


def stratified_split(data: Split, seed: int, test_fraction: float) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(data.labels)
    stratify = data.labels if counts[counts > 0].min() >= 2 else None
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.images, data.labels, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return Split(x_tr, np.asarray(y_tr)), Split(x_te, np.asarray(y_te))


def _from_folder(root: Path) -> Files:
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
    return Files(Split(images, np.asarray(targets, np.int64)), labels)  # type: ignore[arg-type]


def _held_out(path: Path, split: np.ndarray | None, rows: int) -> np.ndarray | None:
    if split is None:
        return None
    values = set(np.unique(split.astype(str)).tolist())
    if split.shape != (rows,) or not values <= {"train", "test"} or len(values) < 2:
        raise DataError(f"{path}: 'split' must name each of the {rows} rows 'train' or 'test'")
    return np.asarray(split.astype(str) == "test")


def _from_npz(path: Path) -> Files:
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
            names = tuple(str(s) for s in data["labels"]) if "labels" in data else None
            split = data.get("split")
    except KeyError as exc:
        raise DataError(f"{path}: needs arrays 'x' (samples) and 'y' (integer labels)") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz: {exc}") from exc
    images = x.dtype == np.uint8 and x.ndim in (3, 4)
    windows = x.dtype == np.float32 and x.ndim in (2, 3)
    if not (images or windows):
        raise DataError(
            f"{path}: 'x' must be uint8 images N×H×W[×C] or float32 windows N×samples or "
            f"N×window×channels, got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    if len(x) == 0:
        raise DataError(f"{path}: holds no images")
    labels = names or tuple(str(i) for i in range(int(y.max()) + 1))
    if y.min() < 0 or y.max() >= len(labels):
        raise DataError(f"{path}: labels in 'y' must lie in 0..{len(labels) - 1}")
    return Files(Split(x, y.astype(np.int64)), labels, _held_out(path, split, len(x)))


def read_files(path: Path) -> Files | None:
    """A folder of ``<label>/<image>`` files or an ``.npz``, with its label names; None when
    ``path`` is neither."""
    if path.is_dir():
        return _from_folder(path)
    if path.suffix == ".npz" and path.is_file():
        return _from_npz(path)
    return None


def split_dataset(
    source: str, files: Files, spec: AnySpec | None, *, seed: int, test_fraction: float
) -> Dataset:
    """The samples split into training and held-out ones: as the file's ``split`` says, else
    stratified and seeded."""
    data = files.data
    if len(data.labels) < 2:
        raise DataError(f"{source}: needs at least 2 samples to hold some out for evaluation")
    if files.held_out is not None:
        test, train = (
            Split(data.images[mask], data.labels[mask])
            for mask in (files.held_out, ~files.held_out)
        )
    else:
        train, test = stratified_split(data, seed, test_fraction)
    return Dataset(train, test, files.labels, spec)


def check_fits(source: str, dataset: Dataset, spec: AnySpec) -> None:
    """The samples are what the preprocess takes (images for an image spec, windows of its
    length for audio and sensors); one line naming the mismatch otherwise."""
    sample = np.asarray(dataset.test.images[0])
    if isinstance(spec, LogMelSpec | WaveformSpec):
        wanted: tuple[int, ...] = (spec.window,)
    elif isinstance(spec, SensorSpec):
        wanted = (spec.window, spec.channels)
    else:
        if sample.dtype != np.uint8:
            raise DataError(
                f"--data {source}: holds {sample.dtype} windows, not uint8 images: "
                "give --preprocess with an audio or sensor spec"
            )
        return
    if sample.dtype != np.float32 or sample.shape != wanted:
        raise DataError(
            f"--data {source}: samples are {sample.dtype} {list(sample.shape)}, the "
            f"{spec.kind} preprocess takes float32 {list(wanted)}"
        )


def check_labels(postprocess: PostprocessSpec, labels: tuple[str, ...]) -> None:
    """A given postprocess reads the model's outputs as the data's labels, in their order."""
    given = tuple(getattr(postprocess, "labels", ()))
    if given != labels:
        raise DataError(
            f"--postprocess labels {clip(list(given), 80)} differ from the data's "
            f"{clip(list(labels), 80)}: list the data's labels in their order"
        )
