"""The cloud side of the product as processes, against any broker of tests/brokers.py (shared by
tests/test_brokers.py and bench/brokers.py): ``edgewise serve``, ``edgewise push`` in each chunk
mode, ``edgewise gc``, the real agent with its default keepalive on one or several broker URLs,
and the retained blob topics a broker holds."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from device_harness import DEVICE, TOPICS, install
from helpers import BIN, AgentProcess

from agent.contract import Package
from compiler.fleet.gc import collect
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect
from compiler.recipe.demo import write_agent_config

EDGEWISE = str(BIN / "edgewise")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class ServeProcess:
    """``edgewise serve --blobs DIR`` on one broker node, ready once it says ``serving``."""

    def __init__(self, host: str, port: int, store: Path):
        self.proc = subprocess.Popen(
            [EDGEWISE, "serve", "--blobs", str(store), "--host", host, "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise RuntimeError(f"edgewise serve did not start: {line}{self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.served: int | None = None

    def stop(self) -> str:
        """SIGTERM: it exits 0 with its summary on stderr (``served N chunks``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"edgewise serve exited {self.proc.returncode}: {err[-2000:]}")
        self.served = int(err.split("served ")[1].split(" chunks")[0])
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


def push(
    package: Package, host: str, port: int, mode: str = "retained", *, key: Path | None = None,
    store: Path | None = None, urls: tuple[str, ...] = (), wait: float | None = None,
    target: str = f"device:{DEVICE}",
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``edgewise push PKG --to TARGET --chunks MODE`` (``--key``, ``--blobs``, ``--url``,
    ``--wait`` when given); the finished process."""
    args = [EDGEWISE, "push", str(package.root), "--to", target, "--chunks", mode,
            "--host", host, "--port", str(port)]  # fmt: skip
    args += ["--key", str(key)] if key else []
    args += ["--blobs", str(store)] if store else []
    args += [arg for url in urls for arg in ("--url", url)]
    args += ["--wait", str(wait)] if wait is not None else []
    timeout = 600 if wait is None else wait + 600
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def gc(host: str, port: int) -> str:
    run = subprocess.run(
        [EDGEWISE, "gc", "--host", host, "--port", str(port)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"edgewise gc: {run.stdout}{run.stderr}")
    return run.stdout


def retained_blob_topics(host: str, port: int) -> dict[str, set[str]]:
    """The retained chunk topics under blobs/, by blob sha256 (gc's own inventory: a wildcard
    subscription, then a marker of its own that comes back after every retained message)."""
    client = connect(BrokerAddress(host, port))
    try:
        return collect(client, TOPICS).chunks
    finally:
        disconnect(client)


def start_agent(
    broker: Any, base: Package, public_key: Path, video: Path, root: Path, deploy: str
) -> AgentProcess:
    """The real agent serving ``base`` from disk, on every URL of ``broker`` (``[mqtt] urls``
    for a cluster), with the agent's default keepalive, and ``deploy`` as its [deploy] section."""
    if not (root / "state" / "current").exists():
        install(base, root / "state")
    config = write_agent_config(
        root / "agent.toml", port=port_of(broker.urls[0]), public_keys=[public_key],
        video=video, state=root / "state", device=DEVICE, extra=deploy,
    )  # fmt: skip
    if len(broker.urls) > 1:
        urls = "urls = [{}]\n".format(", ".join(f'"{u}"' for u in broker.urls))
        config.write_text(config.read_text().replace("[mqtt]\n", f"[mqtt]\n{urls}"))
    return AgentProcess(config, log=root / f"agent-{time.monotonic_ns()}.log")
