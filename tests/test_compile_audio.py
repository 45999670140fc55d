"""``edgewise compile`` on audio: float32 windows in an .npz with the file's own held-out rows,
a log-mel preprocess and an events postprocess from TOML, and the mismatches named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agent.contract import LogMelSpec, logmel_batch, read_package
from compiler.cli import main

RATE, WINDOW = 8000, 4000
LABELS = ("high", "low", "_silence_")
SPEC = LogMelSpec(
    kind="logmel", sample_rate=RATE, window=WINDOW, n_fft=256, hop=128, n_mels=16,
    normalisation="per_window",
)  # fmt: skip
PREPROCESS = """kind = "logmel"
sample_rate = 8000
window = 4000
n_fft = 256
hop = 128
n_mels = 16
normalisation = "per_window"
"""
EVENTS = """kind = "events"
labels = ["high", "low", "_silence_"]
threshold = 0.7
debounce_s = 0.5
smoothing = 2
[thresholds]
low = 0.8
"""


def windows(seed: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Tones at 2 kHz ("high") or 300 Hz ("low") in noise, and noise alone."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW) / RATE
    x, y = [], []
    for label, hz in enumerate((2000.0, 300.0, None)):
        for _ in range(per_class):
            noise = rng.normal(0, 0.02, WINDOW)
            tone = 0.0 if hz is None else 0.3 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6))
            x.append((noise + tone).astype(np.float32))
            y.append(label)
    return np.stack(x), np.asarray(y)


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small trained CNN and its data (.npz with split), written to files."""
    root = tmp_path_factory.mktemp("audio")
    x_train, y_train = windows(0, 40)
    x_test, y_test = windows(1, 10)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3),
    )  # fmt: skip
    features, targets = torch.from_numpy(logmel_batch(x_train, SPEC)), torch.from_numpy(y_train)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(features), targets).backward()
        optimiser.step()
    torch.save(model.eval(), root / "model.pt")
    split = np.array(["train"] * len(y_train) + ["test"] * len(y_test))
    np.savez(
        root / "data.npz", x=np.concatenate([x_train, x_test]), y=np.concatenate([y_train, y_test]),
        labels=np.array(LABELS), split=split,
    )  # fmt: skip
    (root / "logmel.toml").write_text(PREPROCESS)
    (root / "events.toml").write_text(EVENTS)
    return root / "model.pt", root


def compile_args(model: Path, root: Path, key: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compile", str(model), "--name", "tones", "--version", "1.0.0", "--key", str(key),
        "--out", str(out), "--no-html", "--data", str(root / "data.npz"),
        "--preprocess", str(root / "logmel.toml"), "--max-accuracy-drop", "5", *extra,
    ]  # fmt: skip


def test_an_audio_model_compiles_to_an_int8_events_package(
    audio_model: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    model, root = audio_model
    out = tmp_path / "out"
    args = compile_args(
        model, root, signing_keys[0], out, "--postprocess", str(root / "events.toml")
    )
    assert main(args) == 0, capsys.readouterr().err
    manifest = read_package(out / "tones-1.0.0").manifest.to_dict()
    assert manifest["preprocess"]["kind"] == "logmel"
    assert manifest["input"]["shape"][1:] == [1, SPEC.n_mels, SPEC.frames]
    assert manifest["postprocess"]["kind"] == "events"
    assert manifest["postprocess"]["thresholds"] == {"low": 0.8}
    stages = manifest["metrics"]["stages"]
    assert stages["int8"]["accuracy"] >= 0.9, stages  # tones in noise: an easy task


def test_the_files_own_split_holds_out_its_test_rows(audio_model: tuple[Path, Path]) -> None:
    from compiler.recipe.digits import load_dataset

    data = load_dataset(str(audio_model[1] / "data.npz"))
    assert len(data.test.labels) == 30 and len(data.train.labels) == 120
    assert data.test.images.dtype == np.float32 and data.labels == LABELS


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ("window = 4000", ("--data", "float32 [4000]", "logmel")),
        ("n_mels = 16", ("--preprocess", "n_mels")),
    ],
)
def test_a_preprocess_that_does_not_fit_the_data_is_named(
    audio_model: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
    capsys,
    change: str,
    needles: tuple[str, ...],
) -> None:  # type: ignore[no-untyped-def]
    model, root = audio_model
    bad = tmp_path / "bad.toml"
    replacement = "window = 3000" if change.startswith("window") else "n_mels = -1"
    bad.write_text(PREPROCESS.replace(change, replacement))
    out = tmp_path / "out"
    args = compile_args(model, root, signing_keys[0], out, "--preprocess", str(bad))
    assert main(args) == 65  # the spec file's content does not fit: EX_DATAERR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert not out.exists()


def test_events_over_other_labels_are_refused(
    audio_model: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    model, root = audio_model
    post = tmp_path / "events.toml"
    post.write_text(EVENTS.replace('"high", "low"', '"low", "high"'))
    out = tmp_path / "out"
    args = compile_args(model, root, signing_keys[0], out, "--postprocess", str(post))
    assert main(args) == 65  # the spec file's content does not fit: EX_DATAERR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--postprocess labels" in err, err
    assert not out.exists() or not any(out.iterdir())
