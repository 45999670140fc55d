"""scikit-learn's bundled handwritten digits, upscaled to 28×28 (no download needed)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.contract import PreprocessSpec

LABELS = tuple(str(d) for d in range(10))
SIZE = 28
# MNIST statistics: the seed recipe normalises with them.
PREPROCESS = PreprocessSpec(
    width=SIZE, height=SIZE, color="GRAY", scale=1 / 255, mean=(0.1307,), std=(0.3081,)
)


@dataclass(frozen=True)
class Split:
    """uint8 images (N×28×28, white ink on black) and integer labels."""

    images: np.ndarray
    labels: np.ndarray


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
    from sklearn.model_selection import train_test_split as sk_split

    data = load_digits_28()
    x_tr, x_te, y_tr, y_te = sk_split(
        data.images, data.labels, test_size=test_fraction, random_state=seed, stratify=data.labels
    )
    return Split(x_tr, y_tr), Split(x_te, y_te)
