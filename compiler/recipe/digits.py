"""scikit-learn's bundled handwritten digits, upscaled to 28×28 (no download needed), and the
data ``--data`` names: ``digits`` or a folder or ``.npz`` of labelled images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.contract import PreprocessSpec

from ..compile.datasets import (
    DataError,
    Dataset,
    Split,
    read_files,
    split_dataset,
    stratified_split,
)

LABELS = tuple(str(d) for d in range(10))
SIZE = 28
# MNIST statistics: the seed recipe normalises with them.
PREPROCESS = PreprocessSpec(
    width=SIZE, height=SIZE, color="GRAY", scale=1 / 255, mean=(0.1307,), std=(0.3081,)
)


def load_digits_28() -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.stack(
        [cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for img in small]
    )
    return Split(images, digits.target.astype(np.int64))


def train_test_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[Split, Split]:
    """A stratified, seeded split; the test part is held out for evaluation only."""
    return stratified_split(load_digits_28(), seed, test_fraction)


def load_dataset(source: str, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """``digits``, a folder of ``<label>/<image>`` files, or an ``.npz``; split with ``seed``."""
    spec: PreprocessSpec | None = None
    if source == "digits":
        data, labels, spec = load_digits_28(), LABELS, PREPROCESS
    elif (files := read_files(Path(source))) is not None:
        data, labels = files
    else:
        raise DataError(f"{source}: not 'digits', an image folder or an existing .npz file")
    return split_dataset(source, data, labels, spec, seed=seed, test_fraction=test_fraction)
