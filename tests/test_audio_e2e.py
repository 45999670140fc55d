"""Keyword spotting end to end: the recipe trains on generated speech, the model is compiled to
int8 with an events postprocess, pushed, and the agent listens through the voice gate to a
recording of keywords, other words, silence and noise in held-out voices. What the agent
publishes over MQTT is exactly what the same parts give in process.

The recipe's small configuration trains in under a minute and is far from the default's
accuracy (``bench/audio.py`` measures that one): here it reports ``_unknown_`` too, so the
path from window to event to MQTT is checked on every word it hears, not on the few keywords a
half-trained model gets right."""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from device_harness import DEVICE, TOPICS
from helpers import AgentProcess

from agent.config import RuntimeConfig
from agent.config.sources import AudioConfig
from agent.contract import read_package
from agent.inference.gate import VoiceGate
from agent.inference.runtime import load_package
from agent.sources.audio import AudioSource
from compiler.cli import main as edgewise
from compiler.fleet.push import push_package
from compiler.fleet.results import DeviceFeed
from compiler.recipe.demo import write_agent_config
from compiler.recipe.kws import train_kws
from compiler.recipe.speech import KEYWORDS
from compiler.recipe.speech_stream import Stream, make_stream

HOP_S, HANGOVER_S = 0.25, 1.0


@pytest.fixture(scope="module")
def kws(
    tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Path, Path]
) -> dict[str, Any]:
    """The small recipe trained and compiled, Silero VAD packaged, and a 40 s recording."""
    root = tmp_path_factory.mktemp("kws")
    # the small configuration with enough fine-tuning to tell some words apart (~45% of windows)
    outcome = train_kws(root / "work", size="small", seed=0, finetune_epochs=15)
    files, key, out = outcome.files, str(signing_keys[0]), root / "packages"
    # every word heard is an event (see the module's docstring); silence never is
    post = files["postprocess.toml"]
    text = post.read_text().split("[thresholds]")[0].replace("threshold = 0.6", "threshold = 0.3")
    post.write_text(text.replace('ignore = ["_unknown_", "_silence_"]', 'ignore = ["_silence_"]'))
    assert edgewise([
        "compile", str(files["model.pt"]), "--name", "kws", "--version", "1.0.0", "--key", key,
        "--out", str(out), "--no-html", "--data", str(files["data.npz"]),
        "--preprocess", str(files["preprocess.toml"]), "--postprocess", str(post),
        "--max-accuracy-drop", "100",
    ]) == 0  # fmt: skip
    assert edgewise(["vad", "--key", key, "--out", str(out)]) == 0
    stream = make_stream(root / "work", 40, keyword_share=0.5, seed=3)
    return {"kws": out / "kws-1.0.0", "vad": out / "vad-1.0.0", "stream": stream, "root": root}


def in_process(stream: Stream, kws: Path, vad: Path) -> tuple[list[tuple[str, float]], int]:
    """The recording through the agent's own parts, one window after another: the events, and
    how many windows the gate held back."""
    runtime = RuntimeConfig()
    session = load_package(read_package(kws), runtime)
    gate = VoiceGate(load_package(read_package(vad), runtime), hangover_s=HANGOVER_S)
    source = AudioSource(AudioConfig(uri=str(stream.path), hop_s=HOP_S, realtime=False))
    source.open()
    events, stop = [], threading.Event()
    while (frame := source.read(stop)) is not None:
        if gate(frame):
            heard = session.infer(frame.image, frame.at).predictions
            events += [(p.label, round(frame.at or 0.0, 3)) for p in heard]
    source.close()
    return events, gate.closed


def one_pass(feed: DeviceFeed, agent: AgentProcess) -> list[dict[str, Any]]:
    """Results of one whole pass over the file: the agent plays it again after its end, so
    the pass is over when stream time starts again."""
    results: list[dict[str, Any]] = []
    while True:
        result = feed.wait_for("results", 60)
        assert result is not None, agent.output()[-3000:]
        if results and result["at"] < results[-1]["at"]:
            return results
        results.append(result)


def gate_figures(cloud) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    """The first telemetry that shows the gate held windows back (within 30 s)."""
    found: queue.Queue[dict[str, Any]] = queue.Queue()
    topic = TOPICS.telemetry(DEVICE)
    cloud.message_callback_add(topic, lambda _c, _u, msg: found.put(json.loads(msg.payload)))
    cloud.subscribe(topic, qos=1)
    deadline = time.monotonic() + 30
    while (left := deadline - time.monotonic()) > 0:
        try:
            figures = found.get(timeout=left)
        except queue.Empty:
            return None
        if figures.get("gate_closed_total", 0) > 0:
            return figures
    return None


def test_the_agent_hears_keywords_through_the_gate_as_in_process(
    kws: dict[str, Any], mosquitto, cloud, signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    stream: Stream = kws["stream"]
    expected, closed = in_process(stream, kws["kws"], kws["vad"])
    assert len(expected) >= 5, "the model heard next to nothing: the test would prove nothing"
    assert closed > 0, "silence in the recording: the gate must hold some windows back"
    config = write_agent_config(
        tmp_path / "agent.toml", port=mosquitto.port, public_keys=[signing_keys[1]],
        video=stream.path, state=tmp_path / "state", device=DEVICE,
        extra=f'[gate]\npackage = "{kws["vad"]}"\nhangover_s = {HANGOVER_S}\n\n'
        "[telemetry]\ninterval_s = 0.5\n",
    )  # fmt: skip
    config.write_text(
        config.read_text()
        .replace('kind = "video"', 'kind = "audio"')
        .replace("loop = true", f"hop_s = {HOP_S}\nrealtime = false")
    )
    feed = DeviceFeed(cloud, TOPICS, DEVICE)
    agent = AgentProcess(config)
    try:
        push_package(cloud, TOPICS, read_package(kws["kws"]), f"device:{DEVICE}")
        # the source stays closed until a model serves: the first result opens the first pass
        published = one_pass(feed, agent)
        telemetry = gate_figures(cloud)
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
    heard = [(r["label"], r["at"]) for r in published]
    assert heard == expected, "over MQTT the agent publishes exactly the events heard in process"
    assert {label for label, _ in heard} <= {*KEYWORDS, "_unknown_"}
    assert all(b - a >= 1.0 for (_, a), (_, b) in itertools.pairwise(heard)), "debounced 1 s"
    assert all(r["model"] == {"name": "kws", "version": "1.0.0"} for r in published)
    assert telemetry is not None and telemetry["gate_passed_total"] > 0
