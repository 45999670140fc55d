"""``edgewise vad``: Silero VAD packaged, signed and accepted by a device, and how well the
packaged model tells generated speech from silence and noise, chunk by chunk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from speech import noise, silence, spoken

from agent.config import RuntimeConfig
from agent.contract import TrustStore, generate_keypair, read_package
from agent.inference.runtime import ModelSession, load_package

CHUNK = 512


def edgewise(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler.cli", *map(str, args)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "signing.key", folder / "signing.pub")
    return folder


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Path:
    out = tmp_path_factory.mktemp("out")
    result = edgewise("vad", "--key", keys / "signing.key", "--out", out, "--threshold", "0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"package: {out / 'vad-1.0.0'}"
    return out / "vad-1.0.0"


@pytest.fixture(scope="module")
def session(packaged: Path, keys: Path) -> ModelSession:
    package = read_package(packaged)
    TrustStore.from_files([keys / "signing.pub"]).verify(package.envelope)
    return load_package(package, RuntimeConfig())  # the golden check runs here


def test_the_package_is_signed_stateful_and_measured(packaged: Path, session: ModelSession) -> None:
    manifest = session.manifest
    assert [s.input for s in manifest.state] == ["state"]
    assert [(c.name, c.value) for c in manifest.constants] == [("sr", 16000)]
    assert manifest.golden is not None and manifest.input.shape == (None, 576)
    metrics = manifest.metrics
    assert metrics["speech_recall"] >= 0.85 and metrics["speech_precision"] >= 0.8
    assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p99"]


def speech_scene() -> tuple[np.ndarray, np.ndarray]:
    """Phrases between silence and noise (none of them those ``edgewise vad`` measured on),
    chunk-aligned; and for each chunk whether it is speech."""
    parts: list[tuple[np.ndarray, bool]] = []
    for i, text in enumerate(("open the garage door", "play some jazz", "good night")):
        parts += [(silence(1.0), False), (spoken(text), True), (noise(1.0, seed=i), False)]
    samples, truth = [], []
    for audio, is_speech in parts:
        audio = audio[: len(audio) // CHUNK * CHUNK]
        samples.append(audio)
        truth.append(np.full(len(audio) // CHUNK, is_speech))
    return np.concatenate(samples), np.concatenate(truth)


def test_the_packaged_vad_hears_speech_and_not_silence_or_noise(session: ModelSession) -> None:
    samples, truth = speech_scene()
    session.reset()
    scores = [session.infer(chunk).predictions[0].score for chunk in samples.reshape(-1, CHUNK)]
    said = np.array(scores) >= 0.5
    recall = (said & truth).sum() / truth.sum()
    precision = (said & truth).sum() / said.sum()
    # Measured on this scene (espeak-ng, silero-vad 6.2.3): recall 0.964, precision 0.941;
    # the floors leave room for another espeak-ng or onnxruntime version.
    assert recall >= 0.9, recall
    assert precision >= 0.8, precision


def test_a_bad_key_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    result = edgewise("vad", "--key", bad, "--out", tmp_path / "out")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "signing key" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unwritable_out_is_one_line(tmp_path: Path, keys: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("")
    result = edgewise("vad", "--key", keys / "signing.key", "--out", taken)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a file, not a folder" in lines[0], result.stderr


def test_without_the_wheel_it_says_how_to_install_it(tmp_path: Path, keys: Path) -> None:
    shadow = tmp_path / "shadow" / "silero_vad"  # a silero_vad without its data found first
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {
        **os.environ,
        "PYTHONPATH": f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    result = edgewise("vad", "--key", keys / "signing.key", "--out", tmp_path / "o", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "silero-vad is not installed: pip install --no-deps silero-vad" in result.stderr
