"""Keyword spotting with the voice gate on long generated recordings, as the agent runs them.

    .venv/bin/python bench/audio.py [--minutes 10] [--free-minutes 30] [--size default]

Trains the keyword-spotting recipe (``edgewise train --task kws``; the speech corpus and the
model are cached under ``--workdir``), compiles it to int8, packages Silero VAD
(``edgewise vad``), writes two recordings in held-out voices (keywords mixed with other words,
silence and noise; and one with no keyword at all), and runs the agent's own parts on them: the
audio source (a file read as fast as inference), the voice gate, the int8 session with its
events. One ONNX Runtime thread, the process's CPU time over the audio's length for the
real-time factor. The same recordings also run ungated, side by side: what the gate saves and
what it costs in recall. Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from audio_truth import Event, Placed, false_accepts_per_hour, score_events, score_vad

from agent.config import RuntimeConfig
from agent.config.sources import AudioConfig
from agent.contract import ClassificationSpec, EventsSpec, read_package
from agent.inference.events import EventDetector
from agent.inference.gate import VoiceGate
from agent.inference.runtime import ModelSession, load_package
from agent.sources.audio import AudioSource
from compiler.cli import main as edgewise
from compiler.recipe.kws import train_kws
from compiler.recipe.speech import KEYWORDS
from compiler.recipe.speech_stream import Stream, make_stream

WINDOW_S, HOP_S, HANGOVER_S = 1.0, 0.25, 1.0
# (smoothing, floor under the tuned thresholds): the trade between hearing and false accepts
SWEEP = ((1, 0.0), (2, 0.0), (3, 0.0), (3, 0.8), (3, 0.9), (4, 0.8))


@dataclass(frozen=True)
class Run:
    events: list[Event]
    passed: list[bool]  # per hop: the gate let the window ending there through
    cpu_s: float
    audio_s: float

    @property
    def rtf(self) -> float:
        return self.cpu_s / self.audio_s


def packages(workdir: Path, size: str, retrain: bool) -> tuple[Path, Path, float]:
    """The int8 keyword package, the VAD package, and the recipe's held-out window accuracy."""
    kws = workdir / "kws"
    model = kws / "model"
    if retrain or not (model / "model.pt").exists():
        outcome = train_kws(kws, size=size, progress=sys.stderr.isatty())
        accuracy = outcome.accuracy
        (model / "accuracy.json").write_text(json.dumps({"accuracy": accuracy}))
    else:
        accuracy = json.loads((model / "accuracy.json").read_text())["accuracy"]
    keys, out = workdir / "keys", workdir / "packages"
    if not (keys / "signing.key").exists():
        assert edgewise(["keygen", "--out", str(keys)]) == 0
    key = str(keys / "signing.key")
    compiled = edgewise([
        "compile", str(model / "model.pt"), "--name", "kws", "--version", "1.0.0",
        "--key", key, "--out", str(out), "--no-html", "--data", str(model / "data.npz"),
        "--preprocess", str(model / "preprocess.toml"),
        "--postprocess", str(model / "postprocess.toml"), "--max-accuracy-drop", "2",
    ])  # fmt: skip
    assert compiled == 0, "the keyword model did not compile"
    assert edgewise(["vad", "--key", key, "--out", str(out), "--version", "1.0.0"]) == 0
    return out / "kws-1.0.0", out / "vad-1.0.0", accuracy


def run(stream: Stream, kws: Path, vad: Path | None) -> Run:
    """The stream through source → (gate) → int8 session with events, on one thread."""
    runtime = RuntimeConfig(intra_op_threads=1, inter_op_threads=1)
    session = load_package(read_package(kws), runtime)
    gate = None
    if vad is not None:
        gate = VoiceGate(load_package(read_package(vad), runtime), hangover_s=HANGOVER_S)
    source = AudioSource(
        AudioConfig(uri=str(stream.path), window_s=WINDOW_S, hop_s=HOP_S, realtime=False)
    )
    stop = threading.Event()
    events: list[Event] = []
    passed: list[bool] = []
    source.open()
    started = time.process_time()
    while (frame := source.read(stop)) is not None:
        admitted = gate is None or gate(frame)
        passed.append(admitted)
        if not admitted:
            continue
        for prediction in session.infer(frame.image, frame.at).predictions:
            events.append(Event(prediction.label, frame.at or 0.0))
    cpu = time.process_time() - started
    source.close()
    return Run(events, passed, cpu, stream.seconds)


def window_scores(stream: Stream, kws: Path) -> list[tuple[float, np.ndarray]]:
    """Each window's probability per label (stream time, row), ungated: the same int8 model
    read as a classifier reporting every label, so events can be replayed with other settings."""
    package = read_package(kws)
    events = package.manifest.postprocess
    assert isinstance(events, EventsSpec)
    every = ClassificationSpec(labels=events.labels, top_k=len(events.labels), softmax=True)
    manifest = package.manifest.model_copy(update={"postprocess": every})
    session = ModelSession(package.model_path, manifest, RuntimeConfig(intra_op_threads=1))
    order = {label: i for i, label in enumerate(events.labels)}
    source = AudioSource(
        AudioConfig(uri=str(stream.path), window_s=WINDOW_S, hop_s=HOP_S, realtime=False)
    )
    source.open()
    rows, stop = [], threading.Event()
    while (frame := source.read(stop)) is not None:
        row = np.zeros(len(order))
        for prediction in session.infer(frame.image).predictions:
            row[order[prediction.label]] = prediction.score
        rows.append((frame.at or 0.0, row))
    source.close()
    return rows


def operating_points(
    kws: Path, mixed: Stream, free: Stream
) -> list[tuple[int, float, float, float]]:
    """(smoothing, threshold floor, keyword accuracy, false accepts an hour) for each setting
    in SWEEP: the events replayed over the same windows, the tuned thresholds raised to the
    floor."""
    spec = read_package(kws).manifest.postprocess
    assert isinstance(spec, EventsSpec)
    scores = {name: window_scores(stream, kws) for name, stream in (("m", mixed), ("f", free))}
    points = []
    for smoothing, floor in SWEEP:
        variant = spec.model_copy(
            update={
                "softmax": False,  # the rows are probabilities already
                "smoothing": smoothing,
                "threshold": max(spec.threshold, floor),
                "thresholds": {k: max(v, floor) for k, v in spec.thresholds.items()},
            }
        )
        heard = {}
        for name, rows in scores.items():
            detect = EventDetector(variant)
            heard[name] = [Event(p.label, at) for at, row in rows for p in detect(row, at)]
        score = score_events(heard["m"], truth(mixed), KEYWORDS, window_s=WINDOW_S, slack_s=1.0)
        fa = false_accepts_per_hour(heard["f"], free.seconds)
        points.append((smoothing, floor, score.accuracy, fa))
    return points


def truth(stream: Stream) -> list[Placed]:
    return [Placed(s.label, s.start_s, s.end_s) for s in stream.truth]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/audio"))
    parser.add_argument("--minutes", type=float, default=10.0, help="recording with keywords")
    parser.add_argument("--free-minutes", type=float, default=30.0, help="keyword-free recording")
    parser.add_argument("--size", choices=("default", "small"), default="default")
    parser.add_argument("--retrain", action="store_true", help="train again, not from the cache")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    kws, vad, window_accuracy = packages(args.workdir, args.size, args.retrain)
    corpus = args.workdir / "kws"
    mixed = make_stream(corpus, args.minutes * 60, keyword_share=0.3, seed=101)
    free = make_stream(corpus, args.free_minutes * 60, keyword_share=0.0, seed=202)
    arms = {name: (run(mixed, kws, gate), run(free, kws, gate)) for name, gate in
            (("gated", vad), ("ungated", None))}  # fmt: skip
    scores = {
        name: score_events(m.events, truth(mixed), KEYWORDS, window_s=WINDOW_S, slack_s=1.0)
        for name, (m, _) in arms.items()
    }
    fa = {name: false_accepts_per_hour(f.events, f.audio_s) for name, (_, f) in arms.items()}
    rtf = {name: (m.cpu_s + f.cpu_s) / (m.audio_s + f.audio_s) for name, (m, f) in arms.items()}
    gate_mixed = arms["gated"][0]
    vad_score = score_vad(gate_mixed.passed, HOP_S, truth(mixed), hangover_s=HANGOVER_S + WINDOW_S)
    print(
        f"keyword spotting on {args.minutes:g} min with keywords and {args.free_minutes:g} min "
        f"without, held-out voices; window accuracy of the recipe {window_accuracy:.3f}"
    )
    print(f"{'':<18}{'gated':>10}{'ungated':>10}")
    gated, ungated = scores["gated"], scores["ungated"]
    print(f"{'kws accuracy':<18}{gated.accuracy:>10.3f}{ungated.accuracy:>10.3f}")
    print(f"{'false accepts/h':<18}{fa['gated']:>10.1f}{fa['ungated']:>10.1f}")
    print(f"{'real-time factor':<18}{rtf['gated']:>10.4f}{rtf['ungated']:>10.4f}")
    for keyword in KEYWORDS:
        print(
            f"{'  recall ' + keyword:<18}{scores['gated'].recall[keyword]:>10.3f}"
            f"{scores['ungated'].recall[keyword]:>10.3f}"
        )
    print(f"gate: speech recall {vad_score.recall:.3f}, precision {vad_score.precision:.3f}, "
          f"windows passed {sum(gate_mixed.passed) / len(gate_mixed.passed):.1%}")  # fmt: skip
    points = operating_points(kws, mixed, free)
    print("operating points (ungated): smoothing, threshold floor → kws accuracy, false accepts/h")
    for smoothing, floor, accuracy, fa_hour in points:
        print(f"  {smoothing}  {floor:.2f}  →  {accuracy:.3f}  {fa_hour:8.1f}")
    figures = {
        "kws_accuracy": round(gated.accuracy, 4),
        "false_accepts_per_hour": round(fa["gated"], 2),
        "vad_recall": round(vad_score.recall, 4),
        "vad_precision": round(vad_score.precision, 4),
        "rtf": round(rtf["gated"], 5),
        "window_accuracy": round(window_accuracy, 4),
        # a keyword the recording never says has no recall: null, not NaN (not JSON)
        "recall": {k: None if v != v else round(v, 4) for k, v in gated.recall.items()},
        "ungated": {
            "kws_accuracy": round(ungated.accuracy, 4),
            "false_accepts_per_hour": round(fa["ungated"], 2),
            "rtf": round(rtf["ungated"], 5),
        },
        "rtf_ratio_gated_to_ungated": round(rtf["gated"] / rtf["ungated"], 3),
        "operating_points": [
            {
                "smoothing": m,
                "floor": f,
                "kws_accuracy": round(a, 4),
                "false_accepts_per_hour": round(h, 1),
            }
            for m, f, a, h in points
        ],
        "minutes": args.minutes,
        "free_minutes": args.free_minutes,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
