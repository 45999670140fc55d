"""The keyword-spotting recipe on its small configuration: generated speech, windows, training
outputs, the evaluation stream and the CLI's one-line failure when espeak-ng is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tomllib

from compiler.recipe import speech
from compiler.recipe.kws import SIZES, KwsOutcome, train_kws, tune_thresholds
from compiler.recipe.kws_windows import KEYWORD_CUT, WINDOW, WindowMaker, augment
from compiler.recipe.speech import (
    HELD_OUT_VOICES,
    KEYWORDS,
    LABELS,
    SILENCE,
    TRAIN_VOICES,
    UNKNOWN,
)
from compiler.recipe.speech_stream import make_stream

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are needed to generate speech",
)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kws")


@pytest.fixture(scope="module")
def trained(workdir: Path) -> KwsOutcome:
    return train_kws(workdir, size="small", seed=0)


def test_a_clip_is_16khz_speech_trimmed_to_the_word(tmp_path: Path) -> None:
    path = tmp_path / "stop.wav"
    audio = speech.synthesize("stop", "en-us", 160, 50, path, effects=speech.Effects(gain_db=-3))
    read, rate = sf.read(path, dtype="float32")
    assert rate == speech.SAMPLE_RATE and read.ndim == 1 and np.array_equal(read, audio)
    assert 0.1 < audio.size / rate < 1.0
    edge = len(audio) // 10  # trimmed: the word's first and last tenths are not silent
    assert speech.rms(audio[:edge]) > 1e-3 and speech.rms(audio[-edge:]) > 1e-4
    assert speech.rms(audio) > 0.01


def test_the_cache_makes_a_second_call_synthesize_nothing(tmp_path: Path) -> None:
    specs = speech.plan(["yes", "cup"], TRAIN_VOICES[:2], 1, seed=3)
    first = speech.build_corpus(tmp_path, specs)
    second = speech.build_corpus(tmp_path, specs)
    assert first.made == len(specs) and second.made == 0
    for a, b in zip(first.clips, second.clips, strict=True):
        assert np.array_equal(a.audio, b.audio)


def test_plans_are_reproducible_and_voices_split() -> None:
    assert speech.plan(KEYWORDS, TRAIN_VOICES, 2, 1) == speech.plan(KEYWORDS, TRAIN_VOICES, 2, 1)
    assert not set(TRAIN_VOICES) & set(HELD_OUT_VOICES)
    held_variants = {voice.partition("+")[2] for voice in HELD_OUT_VOICES}
    assert not held_variants & set(speech.TRAIN_VARIANTS)  # new timbres, not just new mixes
    assert (*KEYWORDS, UNKNOWN, SILENCE) == LABELS and len(LABELS) == 12
    assert len(speech.OTHER_WORDS) >= 40 and not set(speech.OTHER_WORDS) & set(KEYWORDS)


def test_windows_have_the_right_shapes_and_labels(workdir: Path) -> None:
    specs = speech.plan(["go", "dog"], TRAIN_VOICES[:1], 2, seed=0)
    clips = speech.build_corpus(workdir / "cache", specs).clips
    bank = speech.noise_bank(workdir / "cache")
    maker = WindowMaker(clips[:2], clips[2:], bank, np.random.default_rng(0))
    drawn = maker.draw(60)
    assert drawn.x.shape == (60, WINDOW) and drawn.x.dtype == np.float32
    assert set(drawn.y) <= {LABELS.index(w) for w in ("go", UNKNOWN, SILENCE)}
    assert np.abs(drawn.x).max() <= 1.0
    for make, label in ((maker.keyword, "go"), (maker.cut_keyword, UNKNOWN)):
        _window, y, voice = make()
        assert LABELS[y] == label and voice == TRAIN_VOICES[0]
    assert LABELS[maker.silence()[1]] == SILENCE and 0 < KEYWORD_CUT < 0.5
    views = augment(drawn.x[:4], np.random.default_rng(1), bank)
    assert views.shape == (4, WINDOW) and not np.array_equal(views, drawn.x[:4])


def test_training_writes_the_model_data_and_specs(trained: KwsOutcome) -> None:
    files = trained.files
    assert {p.name for p in files.values()} == {
        "model.pt", "data.npz", "preprocess.toml", "postprocess.toml",
    }  # fmt: skip
    data = np.load(files["data.npz"])
    assert data["x"].dtype == np.float32 and data["x"].shape[1] == WINDOW
    assert list(data["labels"]) == list(LABELS) and len(data["y"]) == len(data["x"])
    test, train = data["split"] == "test", data["split"] == "train"
    assert test.any() and train.any() and (test | train).all()
    small = SIZES["small"]
    assert set(data["voices"][test]) - {""} <= set(small.held_out_voices)
    assert not set(data["voices"][train]) & set(HELD_OUT_VOICES)
    assert 0 <= trained.accuracy <= 1 and set(trained.recall) == set(KEYWORDS)


def test_the_spec_files_parse(trained: KwsOutcome) -> None:
    pre = tomllib.loads(trained.files["preprocess.toml"].read_text())
    assert pre["kind"] == "logmel" and pre["window"] == WINDOW and pre["n_mels"] == 40
    post = tomllib.loads(trained.files["postprocess.toml"].read_text())
    assert post["kind"] == "events" and post["labels"] == list(LABELS)
    assert post["ignore"] == [UNKNOWN, SILENCE] and post["softmax"] is True
    assert set(post["thresholds"]) == set(KEYWORDS)
    assert all(0.5 <= t < 1 for t in post["thresholds"].values())


def test_the_model_takes_the_contracts_log_mel(trained: KwsOutcome) -> None:
    import torch

    from agent.contract import LogMelSpec, logmel_batch

    pre = tomllib.loads(trained.files["preprocess.toml"].read_text())
    spec = LogMelSpec.model_validate(pre)
    model = torch.load(trained.files["model.pt"], weights_only=False)
    x = np.load(trained.files["data.npz"])["x"][:3]
    out = model(torch.from_numpy(logmel_batch(x, spec)))
    assert tuple(out.shape) == (3, len(LABELS)) and not model.training


def test_thresholds_keep_false_accepts_low() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(LABELS)), size=400)
    y = np.full(400, LABELS.index(UNKNOWN))
    thresholds = tune_thresholds(probs, y, rate=0.01)
    for word, threshold in thresholds.items():
        passed = (probs[:, LABELS.index(word)] >= threshold).mean()
        assert passed <= 0.01 and threshold >= 0.5


def test_stream_truth_lies_inside_the_file(workdir: Path) -> None:
    stream = make_stream(
        workdir, 20, voices=HELD_OUT_VOICES[:1], keyword_share=0.5, seed=1, takes=2
    )
    audio, rate = sf.read(stream.path, dtype="int16")
    assert rate == 16000 and audio.ndim == 1 and len(audio) / rate == stream.seconds == 20
    assert stream.truth and stream.keywords
    for segment in stream.truth:
        assert 0 <= segment.start_s < segment.end_s <= stream.seconds
        assert segment.label in LABELS[:-1]
        start, end = int(segment.start_s * rate), int(segment.end_s * rate)
        assert np.abs(audio[start:end]).max() > 300  # speech is there, above the noise floor
    starts = [s.start_s for s in stream.truth]
    assert starts == sorted(starts)


def test_a_stream_without_keywords_has_none(workdir: Path) -> None:
    stream = make_stream(
        workdir, 15, voices=HELD_OUT_VOICES[:1], keyword_share=0.0, seed=2, takes=2
    )
    assert stream.truth and not stream.keywords
    assert {s.label for s in stream.truth} == {UNKNOWN}


def test_the_cli_says_one_line_when_espeak_is_missing(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bare), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "compiler.cli", "train", "--task", "kws", "--size", "small",
         "--workdir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr == "edgewise: espeak-ng not found: apt-get install espeak-ng sox\n"
    assert not (tmp_path / "out").exists()
