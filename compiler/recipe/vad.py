"""``edgewise vad``: Silero VAD's ONNX model as a signed package a device can gate audio with.

The model is packaged as shipped, in float: it is 2.3 MB and runs a 32 ms chunk in about 0.1 ms
on one core already, and its LSTM does not take static int8 quantization well (the recurrent
state's range drifts with the audio; calibration on a few clips clips it). The manifest says how
to feed it: 512 new samples at 16 kHz behind the last 64 of the previous chunk (``WaveformSpec``),
the state carried from run to run (``state`` → ``stateN``) and ``sr`` held at 16000.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import RuntimeConfig
from agent.contract import (
    ConstantSpec,
    InputSpec,
    Manifest,
    Package,
    ScoreSpec,
    StateSpec,
    WaveformSpec,
    describe_blob,
)
from agent.inference.golden import golden_outputs
from agent.inference.runtime import open_session

from ..compile.options import check_signing_key
from ..compile.package import write_package
from ..errors import InputError
from . import vad_audio as speech

RATE, WINDOW, CONTEXT = 16000, 512, 64
GOLDEN_SPEECH, GOLDEN_NOISE = 12, 8  # chunks: the state must carry speech into noise
MISSING = "silero-vad is not installed: pip install --no-deps silero-vad"


@dataclass(frozen=True)
class VadOptions:
    out_dir: Path
    signing_key: Path
    name: str = "vad"
    version: str = "1.0.0"
    threshold: float = 0.5


def silero_onnx() -> Path:
    """The wheel's ONNX file, found without importing ``silero_vad`` (its ``__init__`` imports
    torch, which the rest of this command does not need)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(MISSING)
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise InputError(f"{MISSING} ({path} is missing)")
    return path


def _parts(threshold: float) -> dict[str, Any]:
    """The manifest fields that say how to feed Silero VAD and read its output."""
    return {
        "input": InputSpec(name="input", shape=(None, CONTEXT + WINDOW)),
        "preprocess": WaveformSpec(
            kind="waveform", sample_rate=RATE, window=WINDOW, context=CONTEXT
        ),
        "postprocess": ScoreSpec(
            kind="score", threshold=threshold, label_above="speech", label_below="silence"
        ),
        "state": (StateSpec(input="state", output="stateN", shape=(2, 1, 128)),),
        "constants": (ConstantSpec(name="sr", value=RATE),),
    }


def _draft(model: Path, options: VadOptions) -> Manifest:
    """The manifest before the package exists: what the golden outputs are computed with."""
    return Manifest(
        name=options.name,
        version=options.version,
        created_at="draft",
        model=describe_blob(model),
        **_parts(options.threshold),
    )


def chunk_inputs(samples: np.ndarray) -> np.ndarray:
    """Consecutive chunks as the runtime feeds them: N × 1 × (context + window), each chunk
    behind the last ``CONTEXT`` samples of the one before (zeros before the first)."""
    whole = len(samples) // WINDOW * WINDOW
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), samples[:whole].astype(np.float32)])
    starts = np.arange(0, whole, WINDOW)
    return np.stack([padded[s : s + CONTEXT + WINDOW][None] for s in starts])


def probabilities(session: Any, manifest: Manifest, samples: np.ndarray) -> np.ndarray:
    """Speech probability of each whole chunk, the state carried from the first."""
    return golden_outputs(session, manifest, chunk_inputs(samples)).reshape(-1)


def _golden_audio(scene: speech.Scene | None) -> np.ndarray:
    """Speech then noise (voiced harmonics stand in for speech without espeak-ng)."""
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(GOLDEN_NOISE * WINDOW) * speech.NOISE_RMS
    if scene is not None:
        first = int(np.flatnonzero(scene.speech)[0])
        voiced = scene.samples[first * WINDOW : (first + GOLDEN_SPEECH) * WINDOW]
    else:
        t = np.arange(GOLDEN_SPEECH * WINDOW) / RATE
        harmonics = np.arange(1, 12)[:, None]
        voiced = (np.sin(2 * np.pi * 130 * harmonics * t) / harmonics).sum(axis=0) * 0.2
    return np.concatenate([voiced, noise]).astype(np.float32)


def _latency(session: Any, samples: np.ndarray) -> dict[str, float]:
    """Per-chunk time of one run on one thread, as the device's default runtime has it."""
    inputs = chunk_inputs(samples)
    rate = np.array(RATE, np.int64)
    state = np.zeros((2, 1, 128), np.float32)
    times = []
    for chunk in inputs:
        t0 = time.perf_counter()
        _, state = session.run(None, {"input": chunk, "state": state, "sr": rate})
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "latency_ms_p50": round(float(np.percentile(times, 50)), 4),
        "latency_ms_p99": round(float(np.percentile(times, 99)), 4),
    }


def _metrics(
    session: Any, manifest: Manifest, scene: speech.Scene | None, threshold: float
) -> dict[str, Any]:
    """Chunk-level speech recall and precision on generated audio (when espeak-ng is here) at
    the package's threshold, and the time of one chunk."""
    metrics: dict[str, Any] = {
        "model": f"silero-vad {importlib.metadata.version('silero-vad')} (float, not quantized)",
        "chunk_ms": WINDOW * 1000 / RATE,
        "threshold": threshold,
    }
    if scene is None:
        metrics["speech_measured"] = "no: espeak-ng is not installed"
        noise = np.random.default_rng(2).standard_normal(300 * WINDOW).astype(np.float32)
        return {**metrics, **_latency(session, noise * speech.NOISE_RMS)}
    said = probabilities(session, manifest, scene.samples) >= threshold
    recall, precision = speech.recall_precision(said, scene.speech)
    return {
        **metrics,
        "speech_recall": round(recall, 4),
        "speech_precision": round(precision, 4),
        "speech_chunks": int(scene.speech.sum()),
        "chunks": len(scene.speech),
        "measured_on": "espeak-ng en-us: " + "; ".join(speech.PHRASES) + ", then silence, noise",
        **_latency(session, scene.samples),
    }


def package_vad(options: VadOptions, work: Path) -> Package:
    """Silero VAD measured on generated audio, its golden file written, packaged and signed."""
    model = silero_onnx()
    check_signing_key(options.signing_key)
    draft = _draft(model, options)
    session = open_session(model, RuntimeConfig(intra_op_threads=1))
    scene = speech.scene() if speech.espeak_available() else None
    golden_in = chunk_inputs(_golden_audio(scene))
    golden = work / "golden.npz"
    np.savez(golden, inputs=golden_in, outputs=golden_outputs(session, draft, golden_in))
    return write_package(
        options.out_dir,
        model,
        name=options.name,
        version=options.version,
        input_spec=draft.input,
        preprocess=draft.preprocess,
        postprocess=draft.postprocess,
        metrics=_metrics(session, draft, scene, options.threshold),
        signing_key=options.signing_key,
        golden=golden,
        state=draft.state,
        constants=draft.constants,
    )
