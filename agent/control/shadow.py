"""Shadow evaluation: a staged candidate runs beside the serving model on a sampled share of live
frames, within a CPU budget, and is compared with it; its results are never published.

On the inference thread :meth:`ShadowRunner.offer` only samples and hands the frame to a one-deep
slot (dropped and counted when full). The "shadow" thread infers the candidate, compares
(``agent.inference.agreement``), keeps disagreeing frames as JPEG, reports every ``interval_s``
and promotes by itself when the agreement's lower bound allows."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from agent.config import RuntimeConfig
from agent.config.control import ShadowConfig
from agent.contract import Manifest, Package, clip
from agent.delivery.outcomes import model_of
from agent.errors import AgentError, ModelLoadError
from agent.inference.agreement import Agreement, compare
from agent.inference.runtime import Inference, ModelSession, load_package
from agent.sources import Frame

log = logging.getLogger(__name__)

SAMPLE_EPSILON = 1e-9  # ten times 0.1 is 0.9999999999999999: still one frame in ten
CPU_WINDOW_S = 5.0  # the CPU budget is averaged over this long
COUNTS = ("skipped_busy", "skipped_cpu", "kept")  # per candidate, in every report


class ShadowError(AgentError):
    """No candidate to stop or promote, a candidate that cannot load, or a promotion refused."""


class CpuBudget:
    """CPU seconds spent on the candidate over the last ``window_s``, as a share of one core;
    frames are skipped while it is at ``max_cpu_percent`` (a burst cannot borrow ahead)."""

    def __init__(self, window_s: float = CPU_WINDOW_S):
        self._window = window_s
        self._spent: deque[tuple[float, float]] = deque()  # (monotonic end, CPU seconds)
        self._total = 0.0
        self._lock = threading.Lock()

    def record(self, now: float, cpu_s: float) -> None:
        with self._lock:
            self._spent.append((now, cpu_s))
            self._total += cpu_s

    def percent(self, now: float) -> float:
        """Of one core, over the window that ends now."""
        with self._lock:
            while self._spent and self._spent[0][0] <= now - self._window:
                self._total -= self._spent.popleft()[1]
            return 100 * max(0.0, self._total) / self._window


class TokenBucket:
    """At most ``per_minute`` a minute, in a burst of as many after a quiet minute."""

    def __init__(self, now: float):
        self._tokens, self._last = math.inf, now  # full at first, at the rate then configured

    def take(self, now: float, per_minute: int) -> bool:
        elapsed, self._last = max(0.0, now - self._last), now
        self._tokens = min(float(per_minute), self._tokens + elapsed * per_minute / 60)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Keeper:
    """Disagreeing frames as ``<time>-<frame>.jpg`` with a ``.json`` sidecar; the oldest go
    once more than ``max_kept`` are kept (those of earlier runs count too)."""

    def __init__(self, root: Path):
        self._root = root
        self._stems = deque(sorted(p.stem for p in root.glob("*.jpg")))  # oldest first

    def keep(self, frame: Frame, sidecar: dict[str, Any], max_kept: int) -> bool:
        image = frame.image
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            return False  # a sensor window is no picture
        ok, jpeg = cv2.imencode(".jpg", image)
        if not ok:
            return False
        stem = f"{time.time_ns() // 1000:017d}-{frame.index}"
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            (self._root / f"{stem}.json").write_text(json.dumps(sidecar))
            (self._root / f"{stem}.jpg").write_bytes(jpeg.tobytes())
            self._stems.append(stem)
            while len(self._stems) > max_kept:
                old = self._stems.popleft()
                for suffix in (".jpg", ".json"):
                    (self._root / f"{old}{suffix}").unlink(missing_ok=True)
        except OSError as exc:  # a full disk costs the sample, not the evaluation
            log.warning("shadow: cannot keep a disagreeing frame: %s", exc)
            return False
        return True


@dataclass
class _Candidate:
    package: Package
    session: ModelSession
    next_report: float
    bucket: TokenBucket
    started_at: float = field(default_factory=time.time)
    agreement: Agreement | None = None  # against ``serving``; a new one when serving changes
    serving: dict[str, str] | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    promoting: bool = False
    auto_tried: bool = False  # promoted by itself at most once

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest


class _Work(NamedTuple):
    frame: Frame
    serving: ModelSession
    inference: Inference
    candidate: _Candidate


class ShadowRunner(threading.Thread):
    """Runs at most one candidate beside the serving model (see the module's docstring)."""

    def __init__(
        self,
        *,
        config: Callable[[], ShadowConfig],
        runtime: Callable[[], RuntimeConfig],
        report: Callable[[dict[str, Any]], None],
        promote: Callable[[str], dict[str, Any]],
        keep_dir: Path,
        stop: threading.Event,
    ):
        super().__init__(name="shadow", daemon=True)
        self._config, self._runtime, self._report = config, runtime, report
        self._promote, self._halt = promote, stop
        self._keeper = Keeper(keep_dir)
        self._budget = CpuBudget()
        self._cond = threading.Condition()  # the slot, the candidate, busy
        self._stats = threading.Lock()  # a candidate's counts: added here, read anywhere
        self._candidate: _Candidate | None = None
        self._pending: _Work | None = None
        self._busy = False
        self._credit = 0.0

    def offer(self, frame: Frame, serving: ModelSession, inference: Inference) -> None:
        """An Observer: take every 1/sample-th frame unless over the CPU budget or still busy."""
        candidate = self._candidate
        if candidate is None:
            return
        config = self._config()
        self._credit += config.sample
        if self._credit < 1 - SAMPLE_EPSILON:
            return
        self._credit = max(0.0, self._credit - 1)
        if self._budget.percent(time.monotonic()) >= config.max_cpu_percent:
            candidate.counts["skipped_cpu"] += 1
            return
        with self._cond:
            if self._pending is not None:
                candidate.counts["skipped_busy"] += 1
                return
            self._pending = _Work(frame, serving, inference, candidate)
            self._cond.notify_all()

    def start_candidate(self, package: Package) -> dict[str, Any]:
        """Load, golden-check and run ``package`` as the candidate (replacing another); the same
        name and version already running is left alone. ShadowError when it cannot load."""
        manifest = package.manifest
        current = self._candidate
        if current is not None and model_of(current.manifest) == model_of(manifest):
            return self.describe() or {}
        # One thread for the candidate: time.thread_time() then sees all its CPU, and the
        # candidate cannot take more than the one core the budget is a share of.
        runtime = self._runtime().model_copy(update={"intra_op_threads": 1, "inter_op_threads": 1})
        try:
            session = load_package(package, runtime)
        except ModelLoadError as exc:
            reason = f"candidate {manifest.name} {manifest.version}: {exc}"
            self._report(_event("failed", candidate=model_of(manifest), reason=reason))
            raise ShadowError(reason) from exc
        now = time.monotonic()
        candidate = _Candidate(package, session, now + self._config().interval_s, TokenBucket(now))
        with self._cond:
            old, self._candidate = self._candidate, candidate
            self._pending, self._credit = None, 0.0
        if old is not None:
            what = f"replaced by {manifest.name} {manifest.version}"
            self._report(_event("stopped", **self._metrics(old), reason=what))
        log.info("shadow: %s %s runs beside the serving model", manifest.name, manifest.version)
        started = self._metrics(candidate)
        self._report(_event("started", **started))
        return started

    def stop_candidate(self) -> dict[str, Any]:
        """Stop the candidate; the ``stopped`` event. ShadowError when none runs."""
        candidate = self._candidate
        if candidate is None:
            raise ShadowError("no shadow candidate runs")
        metrics = self._metrics(candidate)
        self._drop(candidate)
        event = _event("stopped", **metrics, reason="stopped")
        self._report(event)
        return event

    def promote(self) -> dict[str, Any]:
        """Serve the candidate (the ``promote`` callable activates its version) and stop
        shadowing it; the ``promoted`` event. ShadowError when none runs or it cannot serve."""
        return self._promote_candidate(self._candidate, by="command")

    def describe(self) -> dict[str, Any] | None:
        """The candidate and its agreement so far; None when none runs."""
        candidate = self._candidate
        return None if candidate is None else self._metrics(candidate)

    def wait_idle(self, timeout: float) -> bool:
        """True once no offered frame waits or is being compared (tests and benchmarks)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def run(self) -> None:
        while not self._halt.is_set():
            work = self._take(0.2)
            if work is not None:
                try:
                    self._evaluate(work)
                except Exception:  # a bug here must not end shadowing of every later candidate
                    log.exception("shadow evaluation failed")
                    self._fail(work.candidate, "internal error in the shadow evaluation")
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
            self._report_due(time.monotonic())
        with self._cond:
            self._candidate, self._pending = None, None
            self._cond.notify_all()

    def _take(self, timeout: float) -> _Work | None:
        with self._cond:
            if self._pending is None:
                self._cond.wait(timeout)
            work, self._pending = self._pending, None
            self._busy = work is not None
            return work

    def _evaluate(self, work: _Work) -> None:
        candidate = work.candidate
        if candidate is not self._candidate:
            return  # stopped or replaced since it was offered
        serving_spec, spec = work.serving.manifest.postprocess, candidate.manifest.postprocess
        if serving_spec.kind != spec.kind:
            self._fail(
                candidate, f"the candidate is {spec.kind}, the serving model {serving_spec.kind}"
            )
            return
        result = self._infer(candidate, work.frame)
        if result is None:
            return
        config = self._config()
        comparison = compare(
            serving_spec, spec, work.inference.predictions, result.predictions, config.iou
        )
        serving = model_of(work.serving.manifest)
        with self._stats:
            if candidate.agreement is None or candidate.serving != serving:
                # Another serving model since: its numbers are not this one's.
                candidate.agreement, candidate.serving = Agreement(spec.kind), serving
            candidate.agreement.add(comparison, work.inference.inference_ms, result.inference_ms)
        if not comparison.agree:
            self._keep(work, result, config)
        self._auto_promote(candidate, config)

    def _infer(self, candidate: _Candidate, frame: Frame) -> Inference | None:
        """The candidate's inference, its CPU time charged to the budget; None when it failed
        (and was dropped: a model that throws on a live frame is no model to promote)."""
        cpu = time.thread_time()
        try:
            return candidate.session.infer(frame.image)
        except Exception as exc:  # ORT's errors are untyped
            self._fail(candidate, f"inference failed on frame {frame.index}: {clip(exc, 200)}")
            return None
        finally:
            self._budget.record(time.monotonic(), time.thread_time() - cpu)

    def _keep(self, work: _Work, result: Inference, config: ShadowConfig) -> None:
        """The disagreeing frame as JPEG with both predictions beside it, within the rate."""
        per_minute = config.disagreements_per_minute
        candidate = work.candidate
        if per_minute <= 0 or not candidate.bucket.take(time.monotonic(), per_minute):
            return
        sidecar: dict[str, Any] = {"frame": work.frame.index, "captured_at": work.frame.captured_at}
        for role, model, out in (
            ("serving", work.serving, work.inference),
            ("candidate", candidate, result),
        ):
            predictions = [p.to_dict() for p in out.predictions]
            sidecar[role] = {"model": model_of(model.manifest), "predictions": predictions}
        if self._keeper.keep(work.frame, sidecar, config.max_kept):
            with self._stats:
                candidate.counts["kept"] += 1

    def _auto_promote(self, candidate: _Candidate, config: ShadowConfig) -> None:
        agreement = candidate.agreement
        if config.promote_at is None or candidate.auto_tried or agreement is None:
            return
        lower = agreement.lower
        if agreement.frames < config.promote_after or lower is None or lower < config.promote_at:
            return
        candidate.auto_tried = True
        try:
            self._promote_candidate(candidate, by="agreement")
        except ShadowError as exc:
            log.warning("shadow: %s", exc)

    def _report_due(self, now: float) -> None:
        candidate = self._candidate
        if candidate is None or now < candidate.next_report:
            return
        candidate.next_report = now + self._config().interval_s
        self._report(_event("report", **self._metrics(candidate)))

    def _promote_candidate(self, candidate: _Candidate | None, by: str) -> dict[str, Any]:
        if candidate is None:
            raise ShadowError("no shadow candidate to promote")
        name, version = candidate.manifest.name, candidate.manifest.version
        with self._cond:
            if candidate is not self._candidate:
                raise ShadowError(f"{name} {version} is no longer the shadow candidate")
            if candidate.promoting:
                raise ShadowError(f"{name} {version} is already being promoted")
            candidate.promoting = True
        metrics = self._metrics(candidate)
        try:
            # Not under a lock: the deployer may be handing us a package while we wait on it.
            active = self._promote(version)
        except AgentError as exc:
            candidate.promoting = False
            reason = f"cannot promote {name} {version}: {exc}"
            self._report(
                _event("failed", candidate=metrics["candidate"], reason=reason, action="promote")
            )
            raise ShadowError(reason) from exc
        self._drop(candidate)
        event = _event("promoted", **metrics, by=by, active=active)
        log.info("shadow: %s %s promoted (%s)", name, version, by)
        self._report(event)
        return event

    def _fail(self, candidate: _Candidate, reason: str) -> None:
        if not self._drop(candidate):
            return
        log.error("shadow: candidate dropped: %s", reason)
        self._report(_event("failed", **self._metrics(candidate), reason=reason))

    def _drop(self, candidate: _Candidate) -> bool:
        """Stop running ``candidate``; False when it no longer was the candidate."""
        with self._cond:
            if self._candidate is not candidate:
                return False
            self._candidate, self._pending = None, None
            self._cond.notify_all()
            return True

    def _metrics(self, candidate: _Candidate) -> dict[str, Any]:
        with self._stats:
            agreement = candidate.agreement or Agreement(candidate.manifest.postprocess.kind)
            summary = agreement.summary()
            counts = dict(candidate.counts)
        return {
            "candidate": model_of(candidate.manifest),
            "serving": candidate.serving,
            "started_at": round(candidate.started_at, 3),
            **summary,
            **counts,
            "cpu_percent": round(self._budget.percent(time.monotonic()), 2),
        }


def _event(state: str, **fields: Any) -> dict[str, Any]:
    return {"type": "shadow", "state": state, **fields}
