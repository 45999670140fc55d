"""Shared fixtures: real brokers, the trained demo model, keys and a compiled package.

torch and the compiler are imported inside the fixtures that need them, so that the agent's own
tests (tests/device/) run where neither is installed (tests/test_layering.py checks it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.contract import Package, generate_keypair

if TYPE_CHECKING:
    from device_harness import Device

    from compiler.compile.datasets import Dataset
    from compiler.compile.pipeline import CompileResult
    from compiler.fleet.broker import MosquittoBroker


@pytest.fixture(scope="session")
def digits() -> Dataset:
    from compiler.recipe.digits import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def trained_model(digits: Dataset) -> Any:
    import torch

    from compiler.recipe.demo_model import train_demo_model
    from compiler.recipe.digits import PREPROCESS

    torch.set_num_threads(2)
    return train_demo_model(digits.train, PREPROCESS, progress=False)


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("keys")
    generate_keypair(root / "signing.key", root / "signing.pub")
    return root / "signing.key", root / "signing.pub"


def _compile(model: Any, digits: Dataset, **options: Any) -> CompileResult:
    from compiler.compile.loading import SourceModel
    from compiler.compile.pipeline import CompileOptions, compile_model
    from compiler.recipe.digits import PREPROCESS

    settings = CompileOptions(name="digits-cnn", progress=False, **options)
    return compile_model(SourceModel("eager", model), digits, PREPROCESS, settings)


@pytest.fixture(scope="session")
def compiled(  # type: ignore[no-untyped-def]
    trained_model, digits, signing_keys, tmp_path_factory
) -> CompileResult:
    return _compile(
        trained_model,
        digits,
        version="1.0.0",
        signing_key=signing_keys[0],
        out_dir=tmp_path_factory.mktemp("packages"),
        chunk_size=64 * 1024,  # several chunks, so reassembly is exercised
        prune_ratio=0.5,
    )


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    """A private mosquitto on a free port, stopped after the test."""
    from compiler.fleet.broker import MosquittoBroker

    broker = MosquittoBroker().start()
    yield broker
    broker.close()


@pytest.fixture
def cloud(mosquitto):  # type: ignore[no-untyped-def]
    """A connected cloud-side client on the test's broker."""
    from compiler.fleet.mqtt import BrokerAddress, connect, disconnect

    client = connect(BrokerAddress(mosquitto.host, mosquitto.port))
    yield client
    disconnect(client)


@pytest.fixture
def video(digits: Dataset, tmp_path: Path) -> Path:
    from compiler.recipe.video import write_digits_video

    path = tmp_path / "digits.avi"
    write_digits_video(path, digits.test, count=60, frames_per_digit=3, seed=1)
    return path


@pytest.fixture
def device(mosquitto, cloud, compiled, signing_keys, video, tmp_path) -> Iterator[Device]:  # type: ignore[no-untyped-def]
    """An agent serving digits-cnn 1.0.0 from disk."""
    from device_harness import install, start_device

    install(compiled.package, tmp_path / "state")
    dev = start_device(mosquitto, cloud, signing_keys, video, tmp_path)
    assert dev.serving() == {"1.0.0"}
    yield dev
    assert dev.agent.stop() == 0, dev.agent.output()[-3000:]


@pytest.fixture(scope="session")
def v2(compiled, trained_model, digits, signing_keys, tmp_path_factory) -> Package:  # type: ignore[no-untyped-def]
    """digits-cnn 1.1.0: the unpruned int8 model (other bytes, ~1.2 MB, 10 chunks)."""
    return _compile(
        trained_model,
        digits,
        version="1.1.0",
        signing_key=signing_keys[0],
        out_dir=tmp_path_factory.mktemp("v2"),
        html=False,
    ).package


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The admin DSN of a PostgreSQL: the machine's at 127.0.0.1:5432, else one started here."""
    from postgres_server import server

    with server() as dsn:
        yield dsn


@pytest.fixture
def pg(pg_server: str) -> Iterator[str]:
    """The DSN of a database of the test's own."""
    from postgres_server import database

    with database(pg_server) as dsn:
        yield dsn
