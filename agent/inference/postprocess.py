"""Model outputs to labelled predictions, as the manifest's ``postprocess`` section declares.

Classification (top-k labels), detection (YOLO boxes mapped back to frame pixels) and a single
score against a threshold. Everything is vectorised numpy plus OpenCV's NMS: it runs per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.contract.manifest import (
    ClassificationSpec,
    DetectionSpec,
    EventsSpec,
    PostprocessSpec,
    ScoreSpec,
)
from agent.contract.preprocess import AnySpec, PreprocessSpec, letterbox_transform

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Prediction:
    """One label with its score; ``box`` is (x1, y1, x2, y2) in frame pixels for detections."""

    label: str
    score: float
    box: Box | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"label": self.label, "score": round(self.score, 5)}
        if self.box is not None:
            out["box"] = [round(v, 1) for v in self.box]
        return out


def label_scores(logits: np.ndarray, spec: ClassificationSpec | EventsSpec) -> np.ndarray:
    """One output row as one score per label: probabilities when ``spec.softmax``."""
    row = np.asarray(logits, dtype=np.float32).reshape(-1)
    if len(row) != len(spec.labels):
        raise ValueError(f"model outputs {len(row)} scores for {len(spec.labels)} labels")
    if spec.softmax:
        row = np.exp(row - row.max())
        row /= row.sum()
    return row


def classify(logits: np.ndarray, spec: ClassificationSpec) -> list[Prediction]:
    """Top-k labels of one output row (probabilities when ``spec.softmax``), best first,
    without those under ``spec.min_score``."""
    row = label_scores(logits, spec)
    # Per frame on a small CPU: the common top-1 case needs no sort.
    order = (
        [int(row.argmax())] if spec.top_k == 1 else np.argsort(-row, kind="stable")[: spec.top_k]
    )
    return [Prediction(spec.labels[i], float(row[i])) for i in order if row[i] >= spec.min_score]


def _candidates(
    output: np.ndarray, spec: DetectionSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cx, cy, w, h rows, scores, class ids) of every candidate in one image's output."""
    arr = np.asarray(output, dtype=np.float32)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise ValueError(f"detection output for {arr.shape[0]} images; expected one")
        arr = arr[0]
    n_labels = len(spec.labels)
    if spec.format == "yolov8":
        if arr.ndim != 2 or arr.shape[0] != 4 + n_labels:
            raise ValueError(
                f"yolov8 output of shape {np.shape(output)}: expected [1, {4 + n_labels}, N] "
                f"for {n_labels} labels"
            )
        xywh, class_scores = arr[:4].T, arr[4:].T
        objectness = None
    else:
        if arr.ndim != 2 or arr.shape[1] != 5 + n_labels:
            raise ValueError(
                f"yolov5 output of shape {np.shape(output)}: expected [1, N, {5 + n_labels}] "
                f"for {n_labels} labels"
            )
        xywh, objectness, class_scores = arr[:, :4], arr[:, 4], arr[:, 5:]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(class_ids)), class_ids]
    if objectness is not None:
        scores = scores * objectness
    return xywh, scores, class_ids.astype(np.int32)


def _to_frame(xyxy: np.ndarray, frame_shape: tuple[int, ...], spec: PreprocessSpec) -> np.ndarray:
    """Undo the preprocess resize on model-input boxes, clipped to the frame."""
    frame_h, frame_w = frame_shape[:2]
    out = xyxy.astype(np.float64)
    if spec.resize == "letterbox":
        scale, pad_left, pad_top = letterbox_transform(frame_shape, spec)
        out -= (pad_left, pad_top, pad_left, pad_top)
        out /= scale
    elif spec.resize == "stretch":
        out *= (frame_w / spec.width, frame_h / spec.height) * 2
    else:
        # Mirror preprocess's rounding so the crop offset matches to the pixel.
        ratio = max(spec.width / frame_w, spec.height / frame_h)
        new_w = max(spec.width, round(frame_w * ratio))
        new_h = max(spec.height, round(frame_h * ratio))
        left, top = (new_w - spec.width) // 2, (new_h - spec.height) // 2
        out += (left, top, left, top)
        out *= (frame_w / new_w, frame_h / new_h) * 2
    np.clip(out[:, 0::2], 0, frame_w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, frame_h, out=out[:, 1::2])
    return out


def _nms(
    xywh_top_left: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, spec: DetectionSpec
) -> np.ndarray:
    """Indices that survive NMS within their class, best first, at most ``max_detections``."""
    boxes = xywh_top_left.astype(np.float64)
    # OpenCV keeps scores strictly above its threshold (which must be >= 0); every score here is
    # already >= ours, so pass the float32 just under it (at 0 that drops only zero scores).
    floor = float(np.nextafter(np.float32(spec.score_threshold), np.float32(0)))
    kept: list[np.ndarray] = []
    # One NMS per class present, not NMSBoxesBatched: with many classes and candidates that is
    # over ten times faster, and top_k lets each stop after max_detections boxes.
    for cls in np.unique(class_ids):
        members = np.flatnonzero(class_ids == cls)
        # cv2's stubs ask for lists; arrays are what it takes without a copy.
        found = cv2.dnn.NMSBoxes(
            boxes[members],  # type: ignore[arg-type]
            scores[members],  # type: ignore[arg-type]
            floor,
            spec.iou_threshold,
            top_k=spec.max_detections,
        )
        kept.append(members[np.asarray(found, dtype=np.int64).reshape(-1)])
    picked = np.concatenate(kept)
    return picked[np.argsort(-scores[picked], kind="stable")][: spec.max_detections]


def detect(
    output: np.ndarray,
    spec: DetectionSpec,
    frame_shape: tuple[int, ...],
    preprocess: PreprocessSpec,
) -> list[Prediction]:
    """Boxes of one image's YOLO output (``spec.format``), after the score threshold and per-class
    NMS, best first, at most ``spec.max_detections``, in the coordinates of a frame of
    ``frame_shape`` that ``preprocess`` turned into the model input."""
    xywh, scores, class_ids = _candidates(output, spec)
    keep = scores >= spec.score_threshold
    xywh, scores, class_ids = xywh[keep], scores[keep], class_ids[keep]
    if not len(scores):
        return []
    top_left = xywh[:, :2] - xywh[:, 2:] / 2
    picked = _nms(np.concatenate([top_left, xywh[:, 2:]], axis=1), scores, class_ids, spec)
    xyxy = np.concatenate([top_left[picked], top_left[picked] + xywh[picked, 2:]], axis=1)
    boxes = _to_frame(xyxy, frame_shape, preprocess).tolist()
    return [
        Prediction(spec.labels[class_ids[i]], float(scores[i]), (x1, y1, x2, y2))
        for i, (x1, y1, x2, y2) in zip(picked, boxes, strict=True)
    ]


def score(output: np.ndarray, spec: ScoreSpec) -> list[Prediction]:
    """The output's first number, labelled ``label_above`` at or over the threshold."""
    values = np.asarray(output).reshape(-1)
    if not len(values):
        raise ValueError("score model returned an empty output")
    value = float(values[0])
    return [Prediction(spec.label_above if value >= spec.threshold else spec.label_below, value)]


def postprocess(
    outputs: list[np.ndarray],
    spec: PostprocessSpec,
    frame_shape: tuple[int, ...],
    preprocess: AnySpec,
) -> list[Prediction]:
    """Predictions for one input from the model's outputs (the first is read), per ``spec``."""
    if not outputs:
        raise ValueError("model returned no outputs")
    first = np.asarray(outputs[0])
    if isinstance(spec, ClassificationSpec):
        return classify(first[0], spec)
    if isinstance(spec, DetectionSpec):
        if not isinstance(preprocess, PreprocessSpec):
            raise ValueError("detection needs an image preprocess spec to map boxes to the frame")
        return detect(first, spec, frame_shape, preprocess)
    if isinstance(spec, EventsSpec):
        raise TypeError("events remember the stream: use agent.inference.events.Postprocessor")
    return score(first, spec)
