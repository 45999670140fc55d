"""One preprocessing implementation for compiler and device, checked on real digit frames."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import VideoConfig
from agent.contract import PreprocessSpec, preprocess, preprocess_batch
from agent.sources.opencv import FrameSource
from compiler.recipe.digits import PREPROCESS
from compiler.recipe.video import FRAME_SIZE, write_digits_video


def test_device_frame_matches_compiler_tensor(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A digit written to video and read back by the agent's source becomes (up to codec noise)
    the tensor the compiler evaluated the model on."""
    test = digits.test
    video = tmp_path / "d.avi"
    labels = write_digits_video(video, test, count=5, frames_per_digit=1, seed=3)
    picks = np.random.default_rng(3).choice(len(test.images), size=5, replace=False)
    source = FrameSource(VideoConfig(kind="video", uri=str(video), realtime=False))
    source.open()
    stop = threading.Event()
    for i, index in enumerate(picks):
        frame = source.read(stop)
        assert frame is not None and frame.image.shape == (FRAME_SIZE, FRAME_SIZE, 3)
        device = preprocess(frame.image, PREPROCESS)
        compiler = preprocess_batch([test.images[index]], PREPROCESS)
        assert labels[i] == test.labels[index]
        assert device.shape == compiler.shape == (1, 1, 28, 28)
        # MJPG is lossy: compare in pixel units (1/255 scaled by 1/std).
        pixel = PREPROCESS.scale / PREPROCESS.std[0]
        assert np.abs(device - compiler).mean() < 3 * pixel
    source.close()


def test_gray_from_bgr_equals_gray_input() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    np.testing.assert_array_equal(preprocess(gray, PREPROCESS), preprocess(bgr, PREPROCESS))


def test_rgb_nhwc_scale_mean_std() -> None:
    spec = PreprocessSpec(
        width=4, height=2, color="RGB", scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        layout="NHWC",
    )  # fmt: skip
    frame = np.zeros((2, 4, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    out = preprocess(frame, spec)
    assert out.shape == (1, 2, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, -1.0, 1.0])  # RGB order: blue is last


def test_letterbox_keeps_aspect_and_pads() -> None:
    spec = PreprocessSpec(width=8, height=8, resize="letterbox", color="GRAY", dtype="uint8")
    frame = np.full((4, 8), 200, np.uint8)
    out = preprocess(frame, spec)[0, 0]
    assert (out[2:6] == 200).all() and (out[:2] == 114).all() and (out[6:] == 114).all()


def test_spec_rejects_wrong_channel_stats() -> None:
    with pytest.raises(ValueError, match="mean"):
        PreprocessSpec(width=2, height=2, color="RGB", mean=(0.1, 0.2))
