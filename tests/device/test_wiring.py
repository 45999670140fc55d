"""The daemon's parts on their own: a source stays closed until a model serves, the result sink
counts what the rate filter holds back across reloads, and the status board's payload."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest
from agent.config import ResultsConfig
from agent.contract import Topics
from agent.inference.pipeline import CaptureWorker, FrameSlot, ModelSlot
from agent.inference.postprocess import Prediction
from agent.inference.runtime import Inference
from agent.notify import SystemdNotifier
from agent.sources import Frame
from agent.upstream.results import RateFilter, ResultBuilder, ResultSink
from agent.upstream.status import StatusBoard

TIMEOUT = 10.0


class CountingSource:
    """Frames of zeros; counts how often it was opened."""

    live = True

    def __init__(self) -> None:
        self.opened = 0
        self._index = 0

    def open(self) -> None:
        self.opened += 1

    def read(self, stop: threading.Event) -> Frame | None:
        stop.wait(0.01)
        self._index += 1
        return Frame(np.zeros((8, 8, 3), np.uint8), self._index, time.time())

    def close(self) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return {}

    @property
    def config(self):  # type: ignore[no-untyped-def]
        class _Config:
            uri = "counting"

        return _Config()


def test_the_source_stays_closed_until_a_model_serves(caplog: pytest.LogCaptureFixture) -> None:
    source, slot, stop, ready = (
        CountingSource(),
        FrameSlot(block=False),
        threading.Event(),
        threading.Event(),
    )
    waiting = threading.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "stays closed" in record.getMessage():
                waiting.set()

    spy = Spy()
    logging.getLogger("agent.inference.pipeline").addHandler(spy)
    logging.getLogger("agent.inference.pipeline").setLevel(logging.INFO)
    worker = CaptureWorker(source, slot, stop, ready=ready)  # type: ignore[arg-type]
    try:
        worker.start()
        assert waiting.wait(TIMEOUT)
        assert source.opened == 0 and worker.frames == 0 and slot.take(0) is None
        ready.set()
        assert slot.take(TIMEOUT) is not None
        assert source.opened == 1
    finally:
        stop.set()
        worker.join(TIMEOUT)
        logging.getLogger("agent.inference.pipeline").removeHandler(spy)
    assert not worker.is_alive()


def test_a_swap_marks_the_slot_serving() -> None:
    models = ModelSlot()
    assert not models.serving.is_set()
    models.swap(object())  # type: ignore[arg-type]
    assert models.serving.is_set()


class _Session:
    class manifest:
        name, version = "digits-cnn", "1.0.0"


class _List:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def append(self, payload: bytes) -> None:
        self.items.append(payload)


def _inference(label: str) -> Inference:
    return Inference([Prediction(label, 0.9)], 0.1, 0.2, 0.3)


def test_the_sink_counts_what_the_filter_holds_back_across_a_reload() -> None:
    outbox, stop = _List(), threading.Event()
    sink = ResultSink(
        builder=ResultBuilder("cam-1", "boot", "video.avi"),
        rate=RateFilter(ResultsConfig(mode="on_change")),
        outbox=outbox,
        stop=stop,
        limit=3,
    )
    frame = Frame(np.zeros((2, 2, 3), np.uint8), 0, time.time())
    for label in ("1", "1", "1", "2"):
        sink(frame, _Session(), _inference(label))  # type: ignore[arg-type]
    assert len(outbox.items) == 2 and sink.suppressed == 2
    sink.reconfigure(ResultsConfig(mode="on_change"))
    sink(frame, _Session(), _inference("2"))  # type: ignore[arg-type]
    assert sink.suppressed == 2  # a fresh filter sends its first result
    assert sink.seq == 3 and stop.is_set()  # the limit is reached
    assert json.loads(outbox.items[0])["id"] == "cam-1:boot:1"


def test_the_status_board_payload() -> None:
    models = ModelSlot()
    board = StatusBoard(
        device="cam-1", boot_id="b1", topics=Topics("edgewise"), source_uri="video.avi",
        models=models, notifier=SystemdNotifier(),
    )  # fmt: skip
    payload = json.loads(board.payload("online"))
    assert payload["state"] == "online" and payload["model"] is None
    assert payload["source"] == {"uri": "video.avi"}
    assert board.serving() == "waiting for a deployment"
    assert board.topic == Topics("edgewise").status("cam-1")
    board.source_state("failed", "unplugged")  # no link yet: kept, nothing sent
    assert json.loads(board.payload("online"))["source"]["state"] == "failed"
