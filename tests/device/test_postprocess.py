"""Postprocessing from the manifest: classification, YOLO detection with NMS and box mapping,
single scores, and one real ONNX detector run end to end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from agent.contract import ClassificationSpec, DetectionSpec, PreprocessSpec, ScoreSpec, SensorSpec
from agent.contract import preprocess as to_model_input
from agent.inference.postprocess import Prediction, classify, detect, postprocess, score
from onnx import TensorProto, helper, numpy_helper

LABELS = ("person", "car", "dog")
IDENTITY = PreprocessSpec(width=320, height=320)  # a 320×320 frame passes through unchanged
FRAME_320 = (320, 320, 3)


def yolov8(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """[1, 4+C, N] from (cx, cy, w, h, class id, score) rows; other classes score 0.01."""
    out = np.full((1, 4 + len(LABELS), len(rows)), 0.01, np.float32)
    for n, (cx, cy, w, h, cls, s) in enumerate(rows):
        out[0, :4, n] = cx, cy, w, h
        out[0, 4 + int(cls), n] = s
    return out


def det_spec(**kwargs: object) -> DetectionSpec:
    return DetectionSpec(kind="detection", labels=LABELS, **kwargs)  # type: ignore[arg-type]


# --- classification ----------------------------------------------------------------------------


def test_classify_top_k_softmax() -> None:
    spec = ClassificationSpec(labels=("a", "b", "c"), top_k=2)
    got = classify(np.array([1.0, 3.0, 2.0], np.float32), spec)
    expected = np.exp([1.0, 3.0, 2.0]) / np.exp([1.0, 3.0, 2.0]).sum()
    assert [p.label for p in got] == ["b", "c"]
    assert [p.score for p in got] == pytest.approx([expected[1], expected[2]])
    assert all(p.box is None for p in got)


def test_classify_without_softmax_and_min_score() -> None:
    spec = ClassificationSpec(labels=("a", "b", "c"), top_k=3, softmax=False, min_score=0.25)
    got = classify(np.array([0.1, 0.3, 0.6], np.float32), spec)
    assert [(p.label, round(p.score, 5)) for p in got] == [("c", 0.6), ("b", 0.3)]


def test_classify_label_count_mismatch_names_both_counts() -> None:
    spec = ClassificationSpec(labels=("a", "b", "c"))
    with pytest.raises(ValueError, match="4 scores for 3 labels"):
        classify(np.zeros(4, np.float32), spec)


# --- detection decoding and NMS ----------------------------------------------------------------


def test_yolov8_decodes_boxes_labels_and_scores() -> None:
    output = yolov8([(100, 50, 40, 20, 1, 0.9), (200, 200, 60, 80, 2, 0.6)])
    got = detect(output, det_spec(), FRAME_320, IDENTITY)
    assert [p.label for p in got] == ["car", "dog"]
    assert [p.score for p in got] == pytest.approx([0.9, 0.6])
    assert got[0].box == pytest.approx((80, 40, 120, 60))
    assert got[1].box == pytest.approx((170, 160, 230, 240))


def test_yolov5_multiplies_objectness_by_class_score() -> None:
    out = np.zeros((1, 3, 5 + len(LABELS)), np.float32)
    out[0, 0, :5] = 100, 100, 20, 40, 0.5  # 0.5 × 0.8 = 0.4: kept
    out[0, 0, 5 + 2] = 0.8
    out[0, 1, :5] = 250, 250, 30, 30, 0.2  # 0.2 × 0.9 = 0.18: under 0.25 despite its class score
    out[0, 1, 5 + 0] = 0.9
    out[0, 2, :5] = 50, 250, 10, 10, 0.9  # 0.9 × 0.5 = 0.45
    out[0, 2, 5 + 1] = 0.5
    got = detect(out, det_spec(format="yolov5"), FRAME_320, IDENTITY)
    assert [(p.label, round(p.score, 4)) for p in got] == [("car", 0.45), ("dog", 0.4)]
    assert got[1].box == pytest.approx((90, 80, 110, 120))


def test_nms_suppresses_same_class_duplicate_but_keeps_other_class() -> None:
    output = yolov8(
        [
            (100, 100, 50, 50, 0, 0.8),  # duplicate of the next, lower score: suppressed
            (102, 102, 50, 50, 0, 0.9),
            (101, 101, 50, 50, 1, 0.7),  # same place, another class: kept
            (250, 250, 50, 50, 0, 0.1),  # under the score threshold
        ]
    )
    got = detect(output, det_spec(), FRAME_320, IDENTITY)
    assert [(p.label, p.score) for p in got] == [
        ("person", pytest.approx(0.9)),
        ("car", pytest.approx(0.7)),
    ]
    assert got[0].box == pytest.approx((77, 77, 127, 127))


def test_score_threshold_is_inclusive_and_max_detections_caps() -> None:
    rows = [(30 + 60 * i, 30, 20, 20, 0, s) for i, s in enumerate([0.3, 0.25, 0.2499, 0.9, 0.5])]
    got = detect(yolov8(rows), det_spec(score_threshold=0.25), FRAME_320, IDENTITY)
    assert [p.score for p in got] == pytest.approx([0.9, 0.5, 0.3, 0.25])
    capped = detect(yolov8(rows), det_spec(max_detections=2), FRAME_320, IDENTITY)
    assert [p.score for p in capped] == pytest.approx([0.9, 0.5])
    assert detect(yolov8(rows), det_spec(score_threshold=0.95), FRAME_320, IDENTITY) == []


def test_per_class_nms_matches_opencv_batched_nms() -> None:
    rng = np.random.default_rng(3)
    n = 400
    xywh = np.concatenate([rng.uniform(0, 320, (n, 2)), rng.uniform(10, 80, (n, 2))], axis=1)
    class_ids = rng.integers(0, len(LABELS), n)
    scores = rng.uniform(0.3, 1.0, n).astype(np.float32)
    rows = [(*xywh[i], int(class_ids[i]), float(scores[i])) for i in range(n)]
    spec = det_spec(max_detections=1000)
    got = detect(yolov8(rows), spec, FRAME_320, IDENTITY)
    top_left = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, 2:]], axis=1)
    ref: np.ndarray = np.asarray(
        cv2.dnn.NMSBoxesBatched(
            top_left,  # type: ignore[arg-type]
            scores,  # type: ignore[arg-type]
            class_ids.astype(np.int32),  # type: ignore[arg-type]
            0.25,
            0.45,
        )
    ).reshape(-1)
    assert 10 < len(got) < n  # some suppressed, many kept
    assert sorted(p.score for p in got) == pytest.approx(sorted(scores[ref].tolist()))
    assert [p.score for p in got] == sorted((p.score for p in got), reverse=True)


def test_wrong_class_count_is_named() -> None:
    with pytest.raises(ValueError, match=r"expected \[1, 7, N\]"):
        detect(np.zeros((1, 6, 10), np.float32), det_spec(), FRAME_320, IDENTITY)


# --- mapping model-input boxes back to the frame -----------------------------------------------


@pytest.mark.parametrize(
    ("resize", "size"),
    [("letterbox", (320, 320)), ("stretch", (320, 320)), ("center_crop", (240, 240))],
)
def test_box_maps_back_through_the_real_preprocess(resize: str, size: tuple[int, int]) -> None:
    """Draw a box on a 640×480 frame, find it in the tensor preprocess makes, decode it from
    there: it must come back where it was drawn."""
    x1, y1, x2, y2 = 200, 60, 400, 300  # frame pixels, right/bottom exclusive
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[y1:y2, x1:x2] = 255
    spec = PreprocessSpec(width=size[0], height=size[1], resize=resize)  # type: ignore[arg-type]
    ys, xs = np.nonzero(to_model_input(frame, spec)[0, 0] > 0.5)
    mx1, my1, mx2, my2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    if resize == "letterbox":  # the box really moved: 0.5 scale, 40 px of padding on top
        assert (mx1, my1, mx2, my2) == (100, 70, 200, 190)
    row = ((mx1 + mx2) / 2, (my1 + my2) / 2, mx2 - mx1, my2 - my1, 1, 0.9)
    (got,) = detect(yolov8([row]), det_spec(), frame.shape, spec)
    assert got.box == pytest.approx((x1, y1, x2, y2), abs=1.0)


def test_letterbox_boxes_are_clipped_to_the_frame() -> None:
    spec = PreprocessSpec(width=320, height=320, resize="letterbox")
    # The whole model input, padding included: unclipped it would span y -80..560.
    (got,) = detect(yolov8([(160, 160, 320, 320, 0, 0.9)]), det_spec(), (480, 640, 3), spec)
    assert got.box == pytest.approx((0, 0, 640, 480))


def test_stretch_scales_each_axis() -> None:
    spec = PreprocessSpec(width=320, height=320, resize="stretch")
    (got,) = detect(yolov8([(100, 100, 40, 60, 2, 0.9)]), det_spec(), (480, 640), spec)
    assert got.box == pytest.approx((160, 105, 240, 195))  # x ×2, y ×1.5


# --- score, dispatch, serialisation ------------------------------------------------------------


def test_score_threshold_labels() -> None:
    spec = ScoreSpec(kind="score", threshold=0.5)
    (above,) = score(np.array([[0.7]], np.float32), spec)
    assert (above.label, above.score, above.box) == ("anomaly", pytest.approx(0.7), None)
    assert score(np.array([[0.2, 9.0]], np.float32), spec)[0].label == "normal"
    assert score(np.array([0.5], np.float32), spec)[0].label == "anomaly"


def test_postprocess_dispatches_on_spec_kind() -> None:
    classes = ClassificationSpec(labels=("a", "b"), softmax=False)
    (top,) = postprocess([np.array([[0.2, 0.8]], np.float32)], classes, (28, 28), IDENTITY)
    assert (top.label, top.score) == ("b", pytest.approx(0.8))
    sensor = SensorSpec(kind="sensor", window=8, channels=2)
    above = ScoreSpec(kind="score", threshold=1.0)
    scored = postprocess([np.array([[3.0]])], above, (8, 2), sensor)
    assert scored[0].label == "anomaly"
    with pytest.raises(ValueError, match="image preprocess"):
        postprocess([yolov8([(1, 1, 1, 1, 0, 0.9)])], det_spec(), (8, 2), sensor)


def test_prediction_to_dict_rounds() -> None:
    assert Prediction("car", 0.123456789, (1.26, 2.0, 3.04, 4.56)).to_dict() == {
        "label": "car",
        "score": 0.12346,
        "box": [1.3, 2.0, 3.0, 4.6],
    }
    assert Prediction("cat", 0.5).to_dict() == {"label": "cat", "score": 0.5}


# --- a small detector built here, run by onnxruntime --------------------------------------------


def constant_detector(path: Path, output: np.ndarray) -> Path:
    """A [1, 3, 320, 320] → yolov8 model that reads its input (so it cannot be folded away) but
    always answers ``output``."""
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["boxes", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        [
            numpy_helper.from_array(output, "boxes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_detector_end_to_end(tmp_path: Path) -> None:
    spec = PreprocessSpec(width=320, height=320, resize="letterbox")
    # Frame boxes (x1, y1, x2, y2) in a 640×480 frame; letterboxed, the model sees them at half
    # size, 40 px lower.
    truth = {"person": (100, 60, 300, 400), "car": (400, 200, 600, 440), "dog": (20, 20, 120, 100)}

    def model_row(box: tuple[int, int, int, int], cls: int, s: float) -> tuple[float, ...]:
        x1, y1, x2, y2 = (box[0] / 2, box[1] / 2 + 40, box[2] / 2, box[3] / 2 + 40)
        return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, cls, s)

    rows = [
        model_row(truth["person"], 0, 0.92),
        model_row(truth["car"], 1, 0.81),
        model_row(truth["dog"], 2, 0.55),
        model_row((104, 64, 304, 404), 0, 0.6),  # a weaker duplicate of the person
        model_row((500, 20, 600, 80), 1, 0.05),  # noise under the threshold
    ]
    path = constant_detector(tmp_path / "det.onnx", yolov8(rows))

    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for name, (x1, y1, x2, y2) in truth.items():
        cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(frame, name, (x1, y1 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": to_model_input(frame, spec)})

    got = postprocess(outputs, det_spec(), frame.shape, spec)
    assert [p.label for p in got] == ["person", "car", "dog"]
    assert [p.score for p in got] == pytest.approx([0.92, 0.81, 0.55])
    for p in got:
        assert p.box == pytest.approx(truth[p.label], abs=1.0)
    assert got[0].to_dict() == {"label": "person", "score": 0.92, "box": [100, 60, 300, 400]}
