"""What a result says, and which results are worth sending (rate control)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

from agent.comms.sizing import fit_result
from agent.config import ResultsConfig
from agent.inference.runtime import Inference, ModelSession
from agent.sources import Frame


class ResultStore(Protocol):
    def append(self, payload: bytes) -> None: ...


class ResultBuilder:
    """Numbers results per boot so ``{device}:{boot}:{seq}`` is unique for deduplication.

    A result over ``max_bytes`` (too big for an MQTT message on its own) is stored cut, its
    lowest-scoring predictions dropped, and flagged ``"truncated": true``: stored whole, it could
    never be sent and would block the results behind it."""

    def __init__(self, device: str, boot_id: str, source: str, max_bytes: int | None = None):
        self._device, self._boot, self._source = device, boot_id, source
        self._max_bytes = max_bytes
        self.seq = 0
        self.truncated = 0

    def build(self, frame: Frame, session: ModelSession, inference: Inference) -> bytes:
        self.seq += 1
        now = time.time()
        top = inference.top
        result: dict[str, Any] = {
            "id": f"{self._device}:{self._boot}:{self.seq}",
            "device": self._device,
            "seq": self.seq,
            "source": self._source,
            "frame": frame.index,
            "captured_at": frame.captured_at,
            "published_at": now,
            "model": {"name": session.manifest.name, "version": session.manifest.version},
            "label": top.label if top else None,
            "score": round(top.score, 5) if top else None,
            "predictions": [p.to_dict() for p in inference.predictions],
            "latency_ms": {
                "preprocess": round(inference.preprocess_ms, 3),
                "inference": round(inference.inference_ms, 3),
                "postprocess": round(inference.postprocess_ms, 3),
                "total": round((now - frame.captured_at) * 1e3, 3),
            },
        }
        if frame.at is not None:
            result["at"] = round(frame.at, 3)  # stream seconds: where in a recording it was heard
        if self._max_bytes is None:
            return json.dumps(result, separators=(",", ":")).encode()
        encoded, cut = fit_result(result, self._max_bytes)
        self.truncated += cut
        return encoded


class RateFilter:
    """Decides per inference whether its result is published (``[results] mode``)."""

    def __init__(self, config: ResultsConfig):
        self.config = self._config = config
        self._last_label: str | None = None
        self._last_sent = float("-inf")
        self.suppressed = 0

    def admit(self, inference: Inference, now: float) -> bool:
        top = inference.top
        label = top.label if top else None
        mode = self._config.mode
        floor = self._config.thresholds.get(label) if label is not None else None
        if floor is not None and top is not None and top.score < floor:
            self.suppressed += 1  # below its label's own threshold, whatever the mode
            return False
        if mode == "on_change":
            send = label != self._last_label
        elif mode == "interval":
            send = now - self._last_sent >= self._config.interval_s
        elif mode == "threshold":
            least = self._config.min_score if floor is None else floor
            send = top is not None and top.score >= least
        else:
            send = True
        self._last_label = label
        if send:
            self._last_sent = now
        else:
            self.suppressed += 1
        return send


class ResultSink:
    """Where the inference thread hands each result: the rate filter decides, the builder
    numbers and encodes, the outbox keeps it. ``limit`` results in all, then ``stop`` is set."""

    def __init__(
        self,
        *,
        builder: ResultBuilder,
        rate: RateFilter,
        outbox: ResultStore,
        stop: threading.Event,
        limit: int | None = None,
    ):
        self._builder, self._rate, self._outbox = builder, rate, outbox
        self._stop, self._limit = stop, limit
        self._suppressed_before = 0  # by filters a reload replaced

    @property
    def seq(self) -> int:
        return self._builder.seq

    @property
    def truncated(self) -> int:
        return self._builder.truncated

    @property
    def suppressed(self) -> int:
        return self._suppressed_before + self._rate.suppressed

    @property
    def config(self) -> ResultsConfig:
        return self._rate.config

    def reconfigure(self, config: ResultsConfig) -> None:
        """A new ``[results]`` section (SIGHUP): a fresh filter, the count carried on."""
        self._suppressed_before += self._rate.suppressed
        self._rate = RateFilter(config)

    def __call__(self, frame: Frame, session: ModelSession, inference: Inference) -> None:
        if not inference.predictions and session.manifest.postprocess.kind == "events":
            return  # a keyword model reports what it heard, not every window of silence
        if not self._rate.admit(inference, time.monotonic()):
            return
        self._outbox.append(self._builder.build(frame, session, inference))
        if self._limit is not None and self._builder.seq >= self._limit:
            self._stop.set()
