"""The voice gate: Silero VAD (the silero-vad wheel's ONNX file, packaged and signed here by
hand) lets audio windows through to the serving model only around speech.

Speech is espeak-ng's (tests/speech.py), so where it starts and ends is known to the sample.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from agent.config import RuntimeConfig, load_config
from agent.contract import (
    MANIFEST_FILE,
    ConstantSpec,
    InputSpec,
    Manifest,
    ScoreSpec,
    StateSpec,
    WaveformSpec,
    describe_blob,
    generate_keypair,
    load_private_key,
    read_package,
    sign_manifest,
)
from agent.delivery.voicegate import build_gate, gate_problems
from agent.errors import ConfigError
from agent.inference.gate import VoiceGate
from agent.inference.pipeline import FrameSlot, HealthStats, InferenceWorker, ModelSlot
from agent.inference.runtime import Inference, ModelSession, load_package
from agent.inference.stats import StageStats
from agent.sources import Frame
from agent.sources.audio import Windower
from agent.upstream.telemetry import FIGURES, gate_figures, telemetry_message
from speech import RATE, noise, silence, spoken

WINDOW, HOP = RATE, RATE // 4  # a keyword spotter's 1 s window every 0.25 s
SILERO = "silero_vad.onnx"


def silero_onnx() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.submodule_search_locations, "./dev installs silero-vad"
    return Path(next(iter(spec.submodule_search_locations))) / "data" / SILERO


def write_vad(root: Path, key: Path, stateful: bool = True) -> Path:
    """A package folder as ``edgewise vad`` writes one (without the golden file)."""
    root.mkdir(parents=True)
    shutil.copyfile(silero_onnx(), root / "model.onnx")
    manifest = Manifest(
        name="vad",
        version="1.0.0",
        created_at="test",
        model=describe_blob(root / "model.onnx"),
        input=InputSpec(name="input", shape=(None, 576)),
        preprocess=WaveformSpec(kind="waveform", window=512, context=64),
        postprocess=ScoreSpec(
            kind="score", threshold=0.5, label_above="speech", label_below="silence"
        ),
        state=(StateSpec(input="state", output="stateN", shape=(2, 1, 128)),) if stateful else (),
        constants=(ConstantSpec(name="sr", value=16000),),
    )
    (root / MANIFEST_FILE).write_bytes(sign_manifest(manifest, load_private_key(key)))
    return root


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "a.key", folder / "a.pub")
    generate_keypair(folder / "other.key", folder / "other.pub")
    return folder


@pytest.fixture(scope="module")
def vad_folder(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Path:
    return write_vad(tmp_path_factory.mktemp("pkg") / "vad-1.0.0", keys / "a.key")


@pytest.fixture(scope="module")
def session(vad_folder: Path) -> ModelSession:
    return load_package(read_package(vad_folder), RuntimeConfig())


def frames(samples: np.ndarray, start_at: float = 0.0, first: int = 0) -> list[Frame]:
    """The audio source's windows of ``samples``: a window every hop, ``at`` its end."""
    windows = Windower(WINDOW, HOP).push(samples)
    return [
        Frame(w, first + i, 0.0, at=start_at + (i * HOP + WINDOW) / RATE)
        for i, w in enumerate(windows)
    ]


SPEECH_AT = 2.0  # seconds of silence before the phrase


def scene() -> tuple[np.ndarray, float]:
    """Silence, a phrase, silence, noise; and when the phrase ends."""
    voice = spoken("turn on the kitchen light")
    samples = np.concatenate([silence(SPEECH_AT), voice, silence(3.0), noise(2.0)])
    return samples, SPEECH_AT + len(voice) / RATE


def passed(gate: VoiceGate, stream: list[Frame]) -> list[float]:
    """The stream time of each frame the gate lets through."""
    return [f.at for f in stream if gate(f) and f.at is not None]


def test_speech_opens_the_gate_and_silence_and_noise_keep_it_closed(
    session: ModelSession,
) -> None:
    samples, speech_end = scene()
    stream = frames(samples)
    gate = VoiceGate(session, hangover_s=1.0)
    opened = passed(gate, stream)
    assert opened, "speech never opened the gate"
    ats = [f.at for f in stream if f.at is not None]
    during = [at for at in ats if SPEECH_AT + HOP / RATE <= at <= speech_end]
    assert set(during) <= set(opened), "a window holding speech was held back"
    # before the phrase (silence), and after it once the hangover is over (silence, noise)
    assert min(opened) > SPEECH_AT
    assert max(opened) <= speech_end + 1.0 + 0.3
    counts = gate.counters()
    assert counts["gate_passed"] == len(opened)
    assert counts["gate_passed"] + counts["gate_closed"] == len(stream)
    heard = (len(stream) - 1) * HOP + WINDOW  # every sample once: the overlap is not rerun
    assert counts["gate_vad_chunks"] == heard // 512
    assert counts["gate_vad_ms"] > 0
    assert counts["gate_errors"] == 0


@pytest.mark.parametrize("hangover_s", [0.5, 2.0])
def test_the_gate_stays_open_for_the_hangover_after_speech(
    session: ModelSession, hangover_s: float
) -> None:
    samples, speech_end = scene()
    gate = VoiceGate(session, hangover_s=hangover_s)
    last = max(passed(gate, frames(samples)))
    # the VAD may hear a chunk or two of the phrase's tail; frames come every 0.25 s
    assert speech_end + hangover_s - 0.5 < last <= speech_end + hangover_s + 0.3


def test_a_stream_that_starts_again_resets_the_vad(session: ModelSession) -> None:
    samples, speech_end = scene()
    gate = VoiceGate(session, hangover_s=1.0)
    speaking = [f for f in frames(samples) if f.at is not None and f.at <= speech_end]
    assert passed(gate, speaking), "speech never opened the gate"
    before = gate.chunks
    # the file looped: stream time goes back to the first window's end, in silence
    again = frames(silence(2.0))
    assert not gate(again[0]), "speech heard later in the last loop held the gate open"
    assert gate.chunks - before == WINDOW // 512  # the whole window, from the initial state


def test_only_unheard_samples_are_run(session: ModelSession) -> None:
    gate = VoiceGate(session)
    stream = frames(silence(10.0))
    gate(stream[0])
    assert gate.chunks == WINDOW // 512  # 31 chunks, 128 samples left for the next frame
    gate(stream[2])  # a frame dropped between (inference was busy): two hops are new
    assert gate.chunks == (WINDOW + 2 * HOP) // 512
    gap = Frame(stream[3].image, 99, 0.0, at=(stream[2].at or 0) + 5.0)
    gate(gap)  # five seconds on: nothing in common with the last window
    assert gate.chunks == (WINDOW + 2 * HOP) // 512 + WINDOW // 512


def test_a_frame_screened_out_is_not_inferred() -> None:
    """InferenceWorker's ``screen`` runs before the model: what it refuses gives no result."""
    inferred: list[int] = []

    class Session:
        def infer(self, image: np.ndarray, at: float | None = None) -> Inference:
            return Inference([], 0.0, 0.0, 0.0)

    slot, models, stop = FrameSlot(block=True, depth=16), ModelSlot(), threading.Event()
    models.swap(Session())  # type: ignore[arg-type]
    worker = InferenceWorker(
        slot,
        models,
        sink=lambda frame, _s, _i: inferred.append(frame.index),
        stop=stop,
        health=HealthStats(),
        stages=StageStats(),
        screen=lambda frame: frame.index % 2 == 0,
    )
    for i in range(6):
        slot.put(Frame(np.zeros(4, np.float32), i, 0.0, at=i * 0.25), stop)
    slot.close()
    worker.run()  # returns once the slot is drained
    assert inferred == [0, 2, 4]


def test_gate_figures_go_to_telemetry_and_metrics() -> None:
    figures = {"gate_passed": 3, "gate_closed": 7, "gate_vad_chunks": 40, "gate_vad_ms": 5.0}
    message = telemetry_message(
        device="d", boot_id="b", interval_s=10, frames=0, frames_before=0, stages={},
        dropped_frames=0, results_queued=0, results_dropped=0, process={}, model=None,
        gate=gate_figures(figures),
    )  # fmt: skip
    named = {"gate_passed_total": 3, "gate_closed_total": 7, "gate_vad_chunks_total": 40}
    assert {k: message[k] for k in named} == named
    assert message["gate_vad_seconds_total"] == 0.005  # seconds, as every figure
    assert {"gate_passed_total", "gate_vad_seconds_total"} <= set(FIGURES)
    assert FIGURES["gate_passed_total"][0] == "counter"


# --- the [gate] config ---------------------------------------------------------------------

CONFIG = """
[device]
id = "mic-1"
state_dir = "state"

[trust]
public_keys = ["{pub}"]

[source]
kind = "audio"
uri = "speech.wav"
sample_rate = {rate}
window_s = 1.0
hop_s = 0.25

[gate]
package = "{package}"
{extra}
"""


def config_file(
    folder: Path, keys: Path, package: Path, rate: int = 16000, extra: str = ""
) -> Path:
    path = folder / "agent.toml"
    text = CONFIG.format(pub=keys / "a.pub", package=package, rate=rate, extra=extra)
    path.write_text(text)
    return path


def test_a_gate_built_from_the_config_gates_speech(
    tmp_path: Path, keys: Path, vad_folder: Path
) -> None:
    config = load_config(config_file(tmp_path, keys, vad_folder, extra="hangover_s = 0.75"))
    assert gate_problems(config) == []
    gate = build_gate(config)
    assert gate is not None and gate.hangover_s == 0.75 and gate.threshold == 0.5
    samples, _ = scene()
    assert passed(gate, frames(samples))


def one_problem(config: Path) -> str:
    problems = gate_problems(load_config(config))
    assert len(problems) == 1 and "\n" not in problems[0], problems
    return problems[0]


def test_config_problems_are_one_line_each(tmp_path: Path, keys: Path, vad_folder: Path) -> None:
    assert "set source.sample_rate = 16000" in one_problem(
        config_file(tmp_path, keys, vad_folder, rate=8000)
    )
    missing = one_problem(config_file(tmp_path, keys, tmp_path / "nowhere"))
    assert missing.startswith("gate.package: cannot read") and "edgewise vad" in missing
    untrusted = write_vad(tmp_path / "theirs", keys / "other.key")
    assert "untrusted" in one_problem(config_file(tmp_path, keys, untrusted))
    stateless = write_vad(tmp_path / "stateless", keys / "a.key", stateful=False)
    assert "carries no state" in one_problem(config_file(tmp_path, keys, stateless))
    audio = 'kind = "audio"\nuri = "speech.wav"\nsample_rate = 16000\nwindow_s = 1.0\nhop_s = 0.25'
    video = config_file(tmp_path, keys, vad_folder).read_text().replace(audio, 'uri = "a.avi"')
    assert 'uri = "a.avi"' in video
    (tmp_path / "video.toml").write_text(video)
    assert "needs an audio source" in one_problem(tmp_path / "video.toml")
    off = config_file(tmp_path, keys, tmp_path / "nowhere", extra="enabled = false")
    assert gate_problems(load_config(off)) == []
    with pytest.raises(ConfigError, match=r"gate\.hangover"):
        load_config(config_file(tmp_path, keys, vad_folder, extra="hangover = 1"))


def test_check_config_refuses_a_bad_gate_in_one_line(tmp_path: Path, keys: Path) -> None:
    config = config_file(tmp_path, keys, tmp_path / "nowhere")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "gate.package: cannot read" in lines[0], result.stderr
