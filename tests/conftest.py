"""Shared fixtures: real brokers, the trained demo model, keys and a compiled package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from device_harness import Device, install, start_device

from agent.contract import Package, generate_keypair
from compiler.compile.datasets import Dataset
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, CompileResult, compile_model
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.recipe.video import write_digits_video


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def trained_model(digits):  # type: ignore[no-untyped-def]
    torch.set_num_threads(2)
    return train_demo_model(digits.train, PREPROCESS, progress=False)


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("keys")
    generate_keypair(root / "signing.key", root / "signing.pub")
    return root / "signing.key", root / "signing.pub"


@pytest.fixture(scope="session")
def compiled(trained_model, digits, signing_keys, tmp_path_factory) -> CompileResult:  # type: ignore[no-untyped-def]
    options = CompileOptions(
        name="digits-cnn",
        version="1.0.0",
        signing_key=signing_keys[0],
        out_dir=tmp_path_factory.mktemp("packages"),
        chunk_size=64 * 1024,  # several chunks, so reassembly is exercised
        prune_ratio=0.5,
        progress=False,
    )
    return compile_model(SourceModel("eager", trained_model), digits, PREPROCESS, options)


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    """A private mosquitto on a free port, stopped after the test."""
    broker = MosquittoBroker().start()
    yield broker
    broker.close()


@pytest.fixture
def cloud(mosquitto):  # type: ignore[no-untyped-def]
    """A connected cloud-side client on the test's broker."""
    client = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    yield client
    disconnect(client)


@pytest.fixture
def video(digits, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "digits.avi"
    write_digits_video(path, digits.test, count=60, frames_per_digit=3, seed=1)
    return path


@pytest.fixture
def device(mosquitto, cloud, compiled, signing_keys, video, tmp_path) -> Iterator[Device]:  # type: ignore[no-untyped-def]
    """An agent serving digits-cnn 1.0.0 from disk."""
    install(compiled.package, tmp_path / "state")
    dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path)
    assert dev.serving() == {"1.0.0"}
    yield dev
    assert dev.agent.stop() == 0, dev.agent.output()[-3000:]


@pytest.fixture(scope="session")
def v2(compiled, trained_model, digits, signing_keys, tmp_path_factory) -> Package:  # type: ignore[no-untyped-def]
    """digits-cnn 1.1.0: the unpruned int8 model (other bytes, ~1.2 MB, 10 chunks)."""
    from compiler.compile.loading import SourceModel
    from compiler.compile.pipeline import CompileOptions, compile_model
    from compiler.recipe.digits import PREPROCESS

    options = CompileOptions(
        name="digits-cnn", version="1.1.0", signing_key=signing_keys[0],
        out_dir=tmp_path_factory.mktemp("v2"), progress=False, html=False,
    )  # fmt: skip
    return compile_model(SourceModel("eager", trained_model), digits, PREPROCESS, options).package
