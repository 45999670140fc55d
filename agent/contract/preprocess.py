"""Image preprocessing, declared once in the manifest and applied identically everywhere.

The compiler calibrates and evaluates through :func:`preprocess`; the agent feeds the model
through the same function, so a frame on the device becomes exactly the tensor the compiler
measured accuracy on.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PreprocessSpec(BaseModel):
    """How a frame (OpenCV BGR or single-channel uint8) becomes the model's input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    resize: Literal["stretch", "letterbox"] = "stretch"
    color: Literal["GRAY", "RGB", "BGR"] = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8"] = "float32"

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    @model_validator(mode="after")
    def _check_stats(self) -> PreprocessSpec:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{key} needs 1 or {self.channels} values for color {self.color}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        return self

    def input_shape(self, batch: int | None = 1) -> list[int | None]:
        if self.layout == "NCHW":
            return [batch, self.channels, self.height, self.width]
        return [batch, self.height, self.width, self.channels]


LETTERBOX_FILL = 114


def _to_color(frame: np.ndarray, color: str) -> np.ndarray:
    gray_in = frame.ndim == 2 or frame.shape[2] == 1
    if color == "GRAY":
        return (
            frame.reshape(frame.shape[:2]) if gray_in else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        )
    if gray_in:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if color == "RGB" else frame


def _resize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == (spec.width, spec.height):
        return image
    if spec.resize == "stretch":
        shrink = w * h > spec.width * spec.height
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(image, (spec.width, spec.height), interpolation=interp)
    ratio = min(spec.width / w, spec.height / h)
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    canvas = np.full((spec.height, spec.width, *image.shape[2:]), LETTERBOX_FILL, image.dtype)
    top, left = (spec.height - new_h) // 2, (spec.width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def preprocess(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One frame (H×W or H×W×3 BGR, uint8) to a batch-of-one tensor in the spec's layout."""
    image = _resize(_to_color(frame, spec.color), spec)
    if image.ndim == 2:
        image = image[:, :, None]
    if spec.dtype == "uint8":
        tensor = image
    else:
        mean = np.asarray(spec.mean, np.float32)
        inv_std = 1.0 / np.asarray(spec.std, np.float32)
        tensor = (image.astype(np.float32) * np.float32(spec.scale) - mean) * inv_std
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None])


def preprocess_batch(frames: np.ndarray | list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Many frames to one batch tensor (used by the compiler for calibration and evaluation)."""
    return np.concatenate([preprocess(f, spec) for f in frames], axis=0)
