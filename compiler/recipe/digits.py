"""scikit-learn's bundled handwritten digits, upscaled to 28×28 (no download needed), and the
data ``--data`` names: ``digits`` or a folder or ``.npz`` of labelled images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.contract import PreprocessSpec

from ..compile.datasets import (
    Dataset,
    Files,
    Split,
    read_files,
    split_dataset,
    stratified_split,
)
from ..errors import InputError

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
        files, spec = Files(load_digits_28(), LABELS), PREPROCESS
    elif (found := read_files(Path(source))) is not None:
        files = found
    else:
        # a path that is not there: the command is wrong (2), not a file's content (65)
        raise InputError(f"{source}: not 'digits', an image folder or an existing .npz file")
    return split_dataset(source, files, spec, seed=seed, test_fraction=test_fraction)


def upscaled_preprocess(size: int = 96) -> PreprocessSpec:
    """RGB ``size``×``size``, ImageNet-style normalisation: what a MobileNet-sized model takes."""
    return PreprocessSpec(
        width=size, height=size, color="RGB", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )


def load_digits_upscaled(size: int = 96) -> Split:
    """The digits as ``size``×``size`` three-channel (grey repeated) uint8 frames, HWC."""
    digits = load_digits_28()
    images = np.stack(
        [cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR) for img in digits.images]
    )
    return Split(np.repeat(images[..., None], 3, axis=-1), digits.labels)


def upscaled_dataset(size: int = 96, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The upscaled digits split like ``load_dataset("digits")``: the same rows held out."""
    files = Files(load_digits_upscaled(size), LABELS)
    spec = upscaled_preprocess(size)
    return split_dataset(f"digits-{size}", files, spec, seed=seed, test_fraction=test_fraction)
