"""A fleet of real agents on one private Mosquitto: N ``edgewise-agent run`` processes, each with
its own id (``cam-000``…), state dir and config, all in group ``fleet``, each serving the same
package at start (installed on its disk as an earlier deployment would have left it).

The source is a looping digits video written at a low frame rate (2 fps by default) and paced
like a camera, so that N agents fit on a couple of cores: what a fleet costs the broker and the
cloud is what is measured, not how fast one box can infer.

A monitor client follows every device's retained status and its events, and the broker's
``$SYS/broker/bytes/sent`` (``sys_interval 1``), so that a bench waits on conditions.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from device_harness import install
from helpers import BIN, AgentProcess

from agent.contract import Package, Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.recipe.demo import write_agent_config
from compiler.recipe.digits import load_dataset
from compiler.recipe.video import write_digits_video

GROUP = "fleet"
TOPICS = Topics()
BYTES_SENT = "$SYS/broker/bytes/sent"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
# Generous deploy limits: N agents probing on two cores wait for CPU, which is not a failure.
# A shadow candidate sees every frame and reports every 2 s: at 2 fps, agreement over 20
# frames is known 10 s after staging.
DEPLOY = """
[deploy]
fetch_timeout = 60
probe_timeout = 120
probe_memory_mb = 1024
max_model_bytes = 64000000
probation_s = {probation_s}
{budget}

[shadow]
sample = 1.0
interval_s = 2
"""


def device_name(index: int) -> str:
    return f"cam-{index:03d}"


def slow_video(path: Path, fps: float = 2.0, digits: int = 20) -> Path:
    """A looping digits clip whose file rate is ``fps``: the agent paces a video at its own
    rate, so this is a camera at ``fps`` frames per second."""
    write_digits_video(path, load_dataset("digits", seed=0).test, count=digits, frames_per_digit=1,
                       fps=fps, seed=3)  # fmt: skip
    return path


@dataclass
class ProcessFigures:
    device: str
    rss_mb: float
    cpu_s: float
    wall_s: float
    pss_mb: float = 0.0  # shared library pages split among the processes that map them

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def process_figures(device: str, pid: int, started: float) -> ProcessFigures | None:
    """RSS now and CPU seconds so far of a live process, from /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    # fields after the command name: utime and stime are the 12th and 13th
    cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
    wall = time.monotonic() - started
    return ProcessFigures(device, int(statm[1]) * PAGE_MB, cpu, wall, pss_mb(pid))


def pss_mb(pid: int) -> float:
    """Proportional set size: what N copies of the agent really cost together is N × this
    (RSS counts onnxruntime's and OpenCV's shared pages once per process)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Monitor:
    """One MQTT client that keeps every device's latest status, its events, and the broker's
    latest bytes-sent counter; ``wait`` blocks on a condition over them."""

    def __init__(self, port: int):
        self.statuses: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []  # every event, with "seen" (monotonic) added
        self.bytes_sent: int | None = None
        self.bytes_updates = 0
        self._changed = threading.Condition()
        self.client = connect(BrokerAddress("127.0.0.1", port), "fleet-monitor")
        self.client.on_message = self._on_message
        Subscriber(self.client).subscribe(
            [(TOPICS.all_devices("status"), 1), (TOPICS.all_devices("events"), 1), (BYTES_SENT, 0)]
        )

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            if msg.topic == BYTES_SENT:
                self.bytes_sent = int(msg.payload)
                self.bytes_updates += 1
            elif msg.topic.endswith("/status") and msg.payload:
                status = json.loads(msg.payload)
                self.statuses[status["device"]] = status
            elif msg.topic.endswith("/events"):
                self.events.append({**json.loads(msg.payload), "seen": time.monotonic()})
            self._changed.notify_all()

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def version(self, device: str) -> str | None:
        status = self.statuses.get(device) or {}
        return (
            ((status.get("model") or {}).get("version"))
            if status.get("state") == "online"
            else None
        )

    def fresh_bytes_sent(self, timeout: float = 10) -> int:
        """The counter as the broker publishes it next (at most ``sys_interval`` from now), so
        that it counts everything sent before this call."""
        with self._changed:
            seen = self.bytes_updates
            if not self._changed.wait_for(lambda: self.bytes_updates >= seen + 2, timeout):
                raise AssertionError(f"no {BYTES_SENT} within {timeout} s")
            assert self.bytes_sent is not None
            return self.bytes_sent

    def close(self) -> None:
        disconnect(self.client)


@dataclass
class Fleet:
    """N agents on one broker. ``budget(device)`` returns extra ``[deploy]`` lines for that
    device (e.g. ``max_latency_ms = 10``): the budgets some boards set and others do not."""

    root: Path
    package: Package
    public_key: Path
    command_key: Path
    agents: int = 5
    fps: float = 2.0
    probation_s: float = 2.0
    budget: Callable[[str], str] = lambda _device: ""
    broker: MosquittoBroker = field(init=False)
    monitor: Monitor = field(init=False)
    processes: dict[str, AgentProcess] = field(init=False, default_factory=dict)
    started: dict[str, float] = field(init=False, default_factory=dict)

    @property
    def devices(self) -> list[str]:
        return [device_name(i) for i in range(self.agents)]

    @property
    def port(self) -> int:
        return self.broker.port

    def config_of(self, device: str) -> str:
        deploy = DEPLOY.format(probation_s=self.probation_s, budget=self.budget(device))
        return (
            f"[runtime]\nintra_op_threads = 1\n\n"
            f'[commands]\npublic_keys = ["{self.command_key.resolve()}"]\n{deploy}'
        )

    def start(self) -> Fleet:
        self.root.mkdir(parents=True, exist_ok=True)
        self.broker = MosquittoBroker(extra_config="sys_interval 1\n").start()
        self.monitor = Monitor(self.broker.port)
        video = slow_video(self.root / "slow.avi", self.fps)
        for device in self.devices:
            self.start_agent(device, video)
        return self

    def start_agent(self, device: str, video: Path) -> None:
        home = self.root / device
        home.mkdir(exist_ok=True)
        install(self.package, home / "state")
        config = write_agent_config(
            home / "agent.toml", port=self.broker.port, public_keys=[self.public_key],
            video=video, state=home / "state", device=device, extra=self.config_of(device),
        )  # fmt: skip
        # groups go in [device]: write_agent_config writes that table first
        text = config.read_text().replace("[device]\n", f'[device]\ngroups = ["{GROUP}"]\n', 1)
        config.write_text(text)
        self.processes[device] = AgentProcess(config)
        self.started[device] = time.monotonic()

    def versions(self) -> dict[str, str | None]:
        """Each device's serving version from its retained status (None: offline or none)."""
        return {d: self.monitor.version(d) for d in self.devices}

    def all_serving(self, version: str) -> bool:
        return all(v == version for v in self.versions().values())

    def wait_serving(self, version: str, timeout: float) -> float:
        """Seconds until every device is online serving ``version``; raises with the stragglers
        (and the first one's log tail) after ``timeout``."""
        start = time.monotonic()
        if not self.monitor.wait(lambda: self.all_serving(version), timeout):
            late = {d: v for d, v in self.versions().items() if v != version}
            first = next(iter(late))
            exited = {
                d: p.proc.poll() for d, p in self.processes.items() if p.proc.poll() is not None
            }
            raise AssertionError(
                f"{len(late)} of {self.agents} devices not serving {version} after {timeout} s: "
                f"{late}; exited {exited}\n{first}:\n{self.processes[first].output()[-2000:]}"
            )
        return time.monotonic() - start

    def figures(self) -> list[ProcessFigures]:
        """Every live agent's RSS and CPU so far."""
        found = (process_figures(d, p.proc.pid, self.started[d]) for d, p in self.processes.items())
        return [f for f in found if f is not None]

    def stop(self) -> list[ProcessFigures]:
        """Every agent's figures just before the stop; SIGTERM to all, then a kill for any
        still there after 15 s; then the monitor and the broker."""
        figures = self.figures()
        for process in self.processes.values():
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.stop(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # a stuck agent is killed, not waited on
                process.kill()
        self.monitor.close()
        self.broker.close()
        return figures


def summary(figures: list[ProcessFigures]) -> dict[str, float]:
    """Mean and max RSS, mean PSS, total CPU percent (of one core) across the agents."""
    if not figures:
        return {"agent_rss_mb_mean": 0.0, "agent_rss_mb_max": 0.0, "agents_cpu_percent": 0.0}
    return {
        "agent_rss_mb_mean": round(statistics.mean(f.rss_mb for f in figures), 1),
        "agent_pss_mb_mean": round(statistics.mean(f.pss_mb for f in figures), 1),
        "agent_rss_mb_max": round(max(f.rss_mb for f in figures), 1),
        "agents_cpu_percent": round(sum(f.cpu_percent for f in figures), 1),
    }


class Controller:
    """``edgewise serve --db --key --command-key`` on the fleet's broker, as a process that a
    bench can SIGKILL and start again on the same database."""

    def __init__(self, fleet: Fleet, db: str, signing_key: Path, command_key: Path):
        self.fleet, self.db = fleet, db
        self.args = [
            "serve", "--blobs", str(fleet.root / "blobs"), "--db", db, "--key", str(signing_key),
            "--command-key", str(command_key), "--host", "127.0.0.1", "--port", str(fleet.port),
        ]  # fmt: skip
        self.log = fleet.root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_s = 0.0  # CPU of the processes already stopped

    def start(self) -> Controller:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "edgewise"), *self.args], stdout=log, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()
        return self

    def cpu(self) -> float:
        """CPU seconds of every serve process so far (this one read live from /proc)."""
        live = process_figures("serve", self.proc.pid, self.started) if self.proc else None
        return self.cpu_s + (live.cpu_s if live else 0.0)

    def kill(self) -> None:
        """SIGKILL: the controller dies mid-step, with its lease still in the database."""
        assert self.proc is not None
        self.cpu_s = self.cpu()
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.cpu_s = self.cpu()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def edgewise(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``edgewise ARGS``, its output captured."""
    return subprocess.run([str(BIN / "edgewise"), *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
