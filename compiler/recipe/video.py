"""A test video of real handwritten digits, written with cv2.VideoWriter, and its ground truth."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..compile.datasets import Split

FRAME_SIZE = 112  # 4× the model input, so the device really resizes


def write_digits_video(
    path: Path,
    split: Split,
    count: int,
    frames_per_digit: int = 3,
    fps: float = 30.0,
    seed: int = 0,
) -> list[int]:
    """Write ``count`` digits from ``split`` as an MJPG AVI; returns the label of every frame."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(split.images), size=count, replace=False)
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (FRAME_SIZE, FRAME_SIZE), isColor=True
    )
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    labels: list[int] = []
    try:
        for i in picks:
            big = cv2.resize(
                split.images[i], (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_NEAREST
            )
            frame = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
            for _ in range(frames_per_digit):
                writer.write(frame)
                labels.append(int(split.labels[i]))
    finally:
        writer.release()
    return labels
