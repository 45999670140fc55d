"""The shadow runner with real ONNX Runtime sessions: tiny models built here, where frame ``i``
lights pixel ``i % 10`` and a classifier answers that pixel's digit (a flipped one swaps two)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from agent.config import RuntimeConfig
from agent.config.control import ShadowConfig
from agent.contract import Manifest, Package, PreprocessSpec, describe_blob
from agent.control.shadow import ShadowError, ShadowRunner
from agent.errors import ActivationError
from agent.inference.runtime import ModelSession, load_package
from agent.sources import Frame
from onnx import TensorProto, helper, numpy_helper

LABELS = tuple(str(d) for d in range(10))
SPEC = PreprocessSpec(width=10, height=1, color="GRAY", scale=1 / 255)
CLASSIFY = {"kind": "classification", "labels": LABELS}
Model = Callable[[Path], Path]


def save(path: Path, nodes: list[Any], output: Any, constants: list[Any]) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 1, 10])],
        [output],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def classifier(swap: tuple[int, int] = (0, 0)) -> Model:
    """Logits 10 × the pixels, classes ``swap`` exchanged (none by default)."""
    order = list(range(10))
    order[swap[0]], order[swap[1]] = order[swap[1]], order[swap[0]]

    def build(path: Path) -> Path:
        nodes = [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Gather", ["flat", "order"], ["picked"], axis=1),
            helper.make_node("Mul", ["picked", "ten"], ["logits"]),
        ]
        constants = [
            numpy_helper.from_array(np.array(order, np.int64), "order"),
            numpy_helper.from_array(np.array(10.0, np.float32), "ten"),
        ]
        logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
        return save(path, nodes, logits, constants)

    return build


def scorer(path: Path) -> Path:
    """The brightest pixel as an anomaly score (another task kind than the classifier)."""
    nodes = [helper.make_node("ReduceMax", ["input"], ["score"], keepdims=0)]
    return save(path, nodes, helper.make_tensor_value_info("score", TensorProto.FLOAT, []), [])


def package(
    root: Path,
    version: str,
    model: Model,
    postprocess: dict[str, Any] = CLASSIFY,
    golden: tuple[np.ndarray, np.ndarray] | None = None,
) -> Package:
    folder = root / f"pkg-{version}"
    folder.mkdir(parents=True)
    golden_spec = None
    if golden is not None:
        np.savez(folder / "golden.npz", inputs=golden[0], outputs=golden[1])
        golden_spec = describe_blob(folder / "golden.npz")
    manifest = Manifest(
        name="pixels", version=version, created_at="2026-11-30T00:00:00+00:00",
        model=describe_blob(model(folder / "model.onnx")), preprocess=SPEC,
        input={"name": "input", "shape": [None, 1, 1, 10]}, postprocess=postprocess,
        golden=golden_spec, mode="shadow",
    )  # fmt: skip
    return Package(folder, b"{}", manifest)


def frame(i: int) -> Frame:
    image = np.zeros((1, 10), np.uint8)
    image[0, i % 10] = 255
    return Frame(image, i, time.time())


class Rig:
    """A runner with its callables recorded; the serving model is version 1.0.0."""

    def __init__(self, root: Path, **config: Any):
        self.root = root
        self.config = ShadowConfig(**config)
        self.events: list[dict[str, Any]] = []
        self.promoted: list[str] = []
        self.promote_error: Exception | None = None
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.runner = ShadowRunner(
            config=lambda: self.config, runtime=RuntimeConfig, report=self.report,
            promote=self.promote, keep_dir=root / "kept", stop=self.stop,
        )  # fmt: skip
        self.serving = load_package(package(root, "1.0.0", classifier()), RuntimeConfig())

    def report(self, event: dict[str, Any]) -> None:
        assert json.loads(json.dumps(event)) == event  # what the status board will publish
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def promote(self, version: str) -> dict[str, Any]:
        self.promoted.append(version)
        if self.promote_error is not None:
            raise self.promote_error
        return {"type": "deployment", "state": "active", "model": {"version": version}}

    def candidate(self, version: str, model: Model, **kw: Any) -> dict[str, Any]:
        return self.runner.start_candidate(package(self.root, version, model, **kw))

    def feed(self, count: int, serving: ModelSession | None = None, start: int = 0) -> None:
        """Offer frames as the inference thread would, each compared before the next."""
        session = serving or self.serving
        for i in range(start, start + count):
            f = frame(i)
            self.runner.offer(f, session, session.infer(f.image))
            assert self.runner.wait_idle(10)

    def states(self) -> list[str]:
        return [e["state"] for e in self.events]

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        with self.changed:
            found = self.changed.wait_for(lambda: next(filter(match, self.events), None), timeout)
        assert found, f"no such event in {self.states()}"
        return found


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    made.runner.start()
    yield made
    made.stop.set()
    made.runner.join(5)
    assert not made.runner.is_alive()


def describe(rig: Rig) -> dict[str, Any]:
    described = rig.runner.describe()
    assert described is not None
    return described


def test_identical_candidate_agrees_fully(rig: Rig) -> None:
    started = rig.candidate("1.1.0", classifier())
    assert started["candidate"] == {"name": "pixels", "version": "1.1.0"}
    assert started["frames"] == 0 and rig.states() == ["started"]
    rig.config = rig.config.model_copy(update={"sample": 1.0})
    rig.feed(50)
    got = describe(rig)
    assert (got["frames"], got["agreements"], got["agreement"]) == (50, 50, 1.0)
    assert (
        got["serving"] == {"name": "pixels", "version": "1.0.0"} and got["task"] == "classification"
    )
    assert got["agreement_lower"] == pytest.approx(50 / (50 + 1.96**2), abs=1e-4)
    assert got["score_delta"] == pytest.approx(0.0, abs=1e-5)
    assert got["latency_ms"]["candidate"]["p99"] > 0 and got["latency_ms"]["serving"]["p50"] > 0


def test_a_candidate_flipping_one_label_in_five(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, interval_s=0.05)
    rig.candidate("1.1.0", classifier(swap=(3, 8)))
    rig.feed(100)
    report = rig.wait(lambda e: e["state"] == "report" and e["frames"] == 100)
    assert report["type"] == "shadow" and report["agreement"] == 0.8
    assert report["agreement_lower"] == pytest.approx(0.71122, abs=1e-4)
    for key in ("skipped_busy", "skipped_cpu", "kept"):
        assert report[key] == 0
    assert set(report["latency_ms"]) == {"serving", "candidate"}
    assert set(report["latency_ms"]["candidate"]) == {"p50", "p99"}


def test_sampling_a_tenth_compares_every_tenth_frame(rig: Rig) -> None:
    rig.candidate("1.1.0", classifier())  # sample = 0.1 by default
    rig.feed(100)
    assert describe(rig)["frames"] == 10
    rig.feed(5, start=100)
    assert describe(rig)["frames"] == 10


def test_a_busy_runner_drops_and_counts(tmp_path: Path) -> None:
    rig = Rig(tmp_path, sample=1.0)  # not started: the first frame stays in the slot
    rig.candidate("1.1.0", classifier())
    for i in range(5):
        f = frame(i)
        rig.runner.offer(f, rig.serving, rig.serving.infer(f.image))
    assert describe(rig)["skipped_busy"] == 4
    rig.runner.start()
    try:
        assert rig.runner.wait_idle(10)
        assert describe(rig)["frames"] == 1
    finally:
        rig.stop.set()
        rig.runner.join(5)


def test_frames_over_the_cpu_budget_are_skipped(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, max_cpu_percent=0.01)  # 0.5 ms of CPU per 5 s
    rig.candidate("1.1.0", classifier())
    rig.feed(200)
    got = describe(rig)
    assert 1 <= got["frames"] < 100
    assert got["skipped_cpu"] == 200 - got["frames"] and got["skipped_busy"] == 0
    assert got["cpu_percent"] >= 0.01


def test_within_the_cpu_budget_nothing_is_skipped(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, max_cpu_percent=50)
    rig.candidate("1.1.0", classifier())
    rig.feed(200)
    assert describe(rig)["frames"] == 200 and describe(rig)["skipped_cpu"] == 0


def kept(rig: Rig) -> list[Path]:
    return sorted((rig.root / "kept").glob("*.jpg"))


def test_disagreeing_frames_are_kept_within_the_rate(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, disagreements_per_minute=3)
    rig.candidate("1.1.0", classifier(swap=(3, 8)))
    rig.feed(50)  # 10 disagreements
    assert describe(rig)["kept"] == 3
    assert [p.stem.split("-")[1] for p in kept(rig)] == ["3", "8", "13"]
    jpeg = cv2.imdecode(np.frombuffer(kept(rig)[0].read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert jpeg.shape == (1, 10)
    sidecar = json.loads(kept(rig)[0].with_suffix(".json").read_text())
    assert sidecar["frame"] == 3
    assert sidecar["serving"]["model"]["version"] == "1.0.0"
    assert sidecar["serving"]["predictions"][0]["label"] == "3"
    assert sidecar["candidate"]["predictions"][0]["label"] == "8"


def test_at_most_max_kept_files_the_oldest_go(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, disagreements_per_minute=1000, max_kept=2)
    rig.candidate("1.1.0", classifier(swap=(3, 8)))
    rig.feed(50)
    assert describe(rig)["kept"] == 10
    assert [p.stem.split("-")[1] for p in kept(rig)] == ["43", "48"]
    assert len(list((rig.root / "kept").glob("*.json"))) == 2


def test_nothing_kept_by_default(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0)
    rig.candidate("1.1.0", classifier(swap=(3, 8)))
    rig.feed(20)
    assert describe(rig)["kept"] == 0 and not (rig.root / "kept").exists()


def test_auto_promotion_once_the_bound_is_reached(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, promote_at=0.9, promote_after=50)
    rig.candidate("1.1.0", classifier())
    rig.feed(49)
    assert rig.promoted == []  # the bound is there (0.9265 at 49) but not the frames
    rig.feed(30, start=49)
    assert rig.promoted == ["1.1.0"]
    promoted = rig.wait(lambda e: e["state"] == "promoted")
    assert promoted["frames"] == 50 and promoted["by"] == "agreement"
    assert promoted["active"]["state"] == "active"
    assert rig.runner.describe() is None


def test_no_auto_promotion_under_the_bound(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, promote_at=0.9, promote_after=10)
    rig.candidate("1.1.0", classifier(swap=(3, 8)))
    rig.feed(100)
    assert rig.promoted == [] and describe(rig)["frames"] == 100


def test_a_refused_auto_promotion_is_tried_once(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0, promote_at=0.5, promote_after=10)
    rig.promote_error = ActivationError("1.1.0 fails its golden check")
    rig.candidate("1.1.0", classifier())
    rig.feed(40)
    assert rig.promoted == ["1.1.0"]
    failed = rig.wait(lambda e: e["state"] == "failed")
    assert failed["action"] == "promote" and "golden check" in failed["reason"]
    assert describe(rig)["frames"] == 40  # still shadowing


def test_promote_and_stop_by_command(rig: Rig) -> None:
    with pytest.raises(ShadowError, match="no shadow candidate"):
        rig.runner.promote()
    with pytest.raises(ShadowError, match="no shadow candidate"):
        rig.runner.stop_candidate()
    rig.candidate("1.1.0", classifier())
    event = rig.runner.promote()
    assert event["state"] == "promoted" and event["by"] == "command" and rig.promoted == ["1.1.0"]
    rig.candidate("1.2.0", classifier())
    stopped = rig.runner.stop_candidate()
    assert stopped["state"] == "stopped" and stopped["candidate"]["version"] == "1.2.0"
    assert rig.runner.describe() is None
    assert rig.states() == ["started", "promoted", "started", "stopped"]


def test_starting_the_running_candidate_again_changes_nothing(rig: Rig) -> None:
    first = rig.candidate("1.1.0", classifier())
    pkg = package(rig.root / "again", "1.1.0", classifier())
    assert rig.runner.start_candidate(pkg)["started_at"] == first["started_at"]
    assert rig.states() == ["started"]
    rig.candidate("1.2.0", classifier())
    assert rig.states() == ["started", "stopped", "started"]
    assert rig.events[1]["reason"] == "replaced by pixels 1.2.0"


def test_a_candidate_that_cannot_load(rig: Rig) -> None:
    wrong = (np.zeros((2, 1, 1, 10), np.float32), np.ones((2, 10), np.float32))
    with pytest.raises(ShadowError, match=r"candidate pixels 1\.1\.0: golden outputs differ"):
        rig.candidate("1.1.0", classifier(), golden=wrong)
    assert rig.states() == ["failed"] and rig.runner.describe() is None


def test_a_candidate_of_another_task_kind_is_dropped(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0)
    rig.candidate("2.0.0", scorer, postprocess={"kind": "score", "threshold": 0.5})
    rig.feed(3)
    failed = rig.wait(lambda e: e["state"] == "failed")
    assert "the candidate is score, the serving model classification" in failed["reason"]
    assert rig.runner.describe() is None


def test_a_new_serving_model_starts_the_count_again(rig: Rig) -> None:
    rig.config = ShadowConfig(sample=1.0)
    rig.candidate("1.1.0", classifier(swap=(3, 8)))
    rig.feed(10)
    other = load_package(package(rig.root, "1.0.1", classifier(swap=(3, 8))), RuntimeConfig())
    rig.feed(20, serving=other)
    got = describe(rig)
    assert got["serving"]["version"] == "1.0.1" and (got["frames"], got["agreement"]) == (20, 1.0)


def test_reports_every_interval_and_stops_with_the_agent(tmp_path: Path) -> None:
    rig = Rig(tmp_path, sample=1.0, interval_s=0.05)
    rig.runner.start()
    rig.candidate("1.1.0", classifier())
    first = rig.wait(lambda e: e["state"] == "report")
    rig.feed(5)
    rig.wait(lambda e: e["state"] == "report" and e["frames"] == 5)
    assert first["frames"] == 0
    rig.stop.set()
    rig.runner.join(5)
    assert not rig.runner.is_alive() and rig.runner.describe() is None
