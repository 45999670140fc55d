"""Image preprocessing, declared once in the manifest and applied identically everywhere.

The compiler calibrates and evaluates through :func:`preprocess`; the agent feeds the model
through the same function, so a frame on the device becomes exactly the tensor the compiler
measured accuracy on.
"""

from __future__ import annotations

from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from agent.contract.audio import LogMelSpec, logmel_batch, logmel_tensor
from agent.contract.waveform import WaveformSpec, waveform_tensor

# Bounds on what a manifest may ask of the device: the agent allocates frames and windows of
# this size in the serving process (warm-up), so they must be sane before anything runs.
MAX_SIDE = 16384
MAX_WINDOW = 2**20
MAX_CHANNELS = 4096


class PreprocessSpec(BaseModel):
    """How a frame (OpenCV BGR or single-channel uint8) becomes the model's input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["image"] = "image"
    width: int = Field(gt=0, le=MAX_SIDE)
    height: int = Field(gt=0, le=MAX_SIDE)
    # stretch: to width×height, aspect lost; letterbox: fit inside, pad (boxes map back through
    # it); center_crop: scale the short side to fit, cut the middle out.
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    color: Literal["GRAY", "RGB", "BGR"] = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = Field(default=(0.0,), max_length=3)
    std: tuple[float, ...] = Field(default=(1.0,), max_length=3)
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
    if spec.resize == "center_crop":
        ratio = max(spec.width / w, spec.height / h)
        new_w, new_h = max(spec.width, round(w * ratio)), max(spec.height, round(h * ratio))
        interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
        top, left = (new_h - spec.height) // 2, (new_w - spec.width) // 2
        return resized[top : top + spec.height, left : left + spec.width]
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


def preprocess_into(frame: np.ndarray, spec: PreprocessSpec, out: np.ndarray) -> np.ndarray:
    """:func:`preprocess` written into ``out`` (the spec's input shape for a batch of one, its
    dtype), with the same float32 operations in the same order, so the result is identical; the
    serving session reuses one ``out`` for every frame instead of allocating four arrays."""
    image = _resize(_to_color(frame, spec.color), spec)
    if image.ndim == 2:
        image = image[:, :, None]
    target = out[0].transpose(1, 2, 0) if spec.layout == "NCHW" else out[0]  # H×W×C view
    if spec.dtype == "uint8":
        np.copyto(target, image)
        return out
    np.multiply(image, np.float32(spec.scale), out=target, dtype=np.float32)
    np.subtract(target, np.asarray(spec.mean, np.float32), out=target)
    np.multiply(target, 1.0 / np.asarray(spec.std, np.float32), out=target)
    return out


def letterbox_transform(
    frame_shape: tuple[int, ...], spec: PreprocessSpec
) -> tuple[float, int, int]:
    """(scale, pad_left, pad_top) that :func:`preprocess` applied to a frame of this shape, so
    boxes found on the model input map back to the frame: x_frame = (x_model - pad_left) / scale."""
    h, w = frame_shape[:2]
    if spec.resize != "letterbox":
        return 1.0, 0, 0
    ratio = min(spec.width / w, spec.height / h)
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    return ratio, (spec.width - new_w) // 2, (spec.height - new_h) // 2


class SensorSpec(BaseModel):
    """How a window of numeric samples (``window`` rows × ``channels`` columns) becomes the
    model's input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["sensor"]
    window: int = Field(gt=0, le=MAX_WINDOW)
    channels: int = Field(gt=0, le=MAX_CHANNELS)
    mean: tuple[float, ...] = Field(default=(0.0,), max_length=MAX_CHANNELS)
    std: tuple[float, ...] = Field(default=(1.0,), max_length=MAX_CHANNELS)
    layout: Literal["NWC", "NCW"] = "NWC"
    dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _check_stats(self) -> SensorSpec:
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, self.channels):
                raise ValueError(f"{key} needs 1 or {self.channels} values")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        return self

    def input_shape(self, batch: int | None = 1) -> list[int | None]:
        if self.layout == "NWC":
            return [batch, self.window, self.channels]
        return [batch, self.channels, self.window]


def sensor_tensor(window: np.ndarray, spec: SensorSpec) -> np.ndarray:
    """A window×channels array of samples to a batch-of-one tensor."""
    if window.shape != (spec.window, spec.channels):
        raise ValueError(
            f"window of shape {window.shape}, spec wants {(spec.window, spec.channels)}"
        )
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    tensor = (window.astype(np.float32) - mean) / std
    if spec.layout == "NCW":
        tensor = tensor.T
    return np.ascontiguousarray(tensor[None])


def kind_or(default: str) -> Discriminator:
    """Pick a union member by its ``kind`` field, taking ``default`` when it is absent."""

    def kind(value: object) -> str:
        if isinstance(value, dict):
            return str(value.get("kind", default))
        return str(getattr(value, "kind", default))

    return Discriminator(kind)


# What the manifest's ``preprocess`` holds: an image spec (the default), a sensor spec, a
# log-mel spec (audio, agent/contract/audio.py) or raw samples (agent/contract/waveform.py).
InputTransform = Annotated[
    Annotated[PreprocessSpec, Tag("image")]
    | Annotated[SensorSpec, Tag("sensor")]
    | Annotated[LogMelSpec, Tag("logmel")]
    | Annotated[WaveformSpec, Tag("waveform")],
    kind_or("image"),
]
AnySpec = PreprocessSpec | SensorSpec | LogMelSpec | WaveformSpec


def to_tensor(sample: np.ndarray, spec: AnySpec) -> np.ndarray:
    """A frame, a sensor window or an audio window to the model's input, by the manifest's spec."""
    if isinstance(spec, SensorSpec):
        return sensor_tensor(sample, spec)
    if isinstance(spec, LogMelSpec):
        return logmel_tensor(sample, spec)
    if isinstance(spec, WaveformSpec):
        return waveform_tensor(sample, spec)
    return preprocess(sample, spec)


def preprocess_batch(frames: np.ndarray | list[np.ndarray], spec: AnySpec) -> np.ndarray:
    """Many frames or windows to one batch tensor (the compiler's calibration, evaluation and
    training), exactly as :func:`to_tensor` makes each."""
    if isinstance(spec, LogMelSpec):
        return logmel_batch(frames, spec)  # one vectorised pass: a corpus is many windows
    return np.concatenate([to_tensor(f, spec) for f in frames], axis=0)
