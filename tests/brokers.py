"""Private MQTT brokers of several makes for the tests and the bench: Mosquitto, RabbitMQ (its
MQTT plugin), NATS (its MQTT listener) and a three-node NATS cluster.

Each one runs on free loopback ports with its own config and data folders under the folder it is
given, never touching a broker the machine runs on the default ports (nor the system's epmd), and
is ready when its MQTT listener answers a CONNECT with a CONNACK. Each is a context manager and
has the same small interface: ``host``, ``mqtt_port`` (also ``port``, so helpers written for
:class:`compiler.fleet.broker.MosquittoBroker` take it), ``name`` (the make, for test ids and
bench keys), ``urls`` (the ``mqtt://`` URL of every node), ``startup_s``, ``rss_bytes()`` (the
resident memory of the broker's processes, from /proc) and ``close()``.

RabbitMQ 3.10 and NATS 2.9 speak MQTT 3.1.1 only; neither delivers to ``$share`` subscriptions;
RabbitMQ maps ``/`` in topics to ``.`` (so a device id must not contain ``.``) and delivers
retained messages only to subscriptions without wildcards.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from compiler.fleet.broker import MosquittoBroker, free_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
# An MQTT 3.1.1 CONNECT: clean session, keepalive 10 s, client id "ew-probe".


def _connect_packet() -> bytes:
    """A clean-session MQTT 3.1.1 CONNECT with a client id of its own: a NATS cluster refuses a
    client id whose earlier session another node is still closing."""
    client_id = f"ew-probe-{secrets.token_hex(4)}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10, len(body)]) + body


_DISCONNECT = bytes([0xE0, 0x00])


class BrokerStartError(RuntimeError):
    pass


def connack(host: str, port: int, timeout: float = 2.0) -> int | None:
    """The CONNACK return code the listener answers a CONNECT with; None when nothing answers
    (not listening yet, or listening but not serving MQTT yet)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_connect_packet())
            reply = b""
            while len(reply) < 4:
                more = sock.recv(4 - len(reply))
                if not more:
                    return None
                reply += more
            with contextlib.suppress(OSError):
                sock.sendall(_DISCONNECT)
    except OSError:
        return None
    return reply[3] if reply[0] == 0x20 else None


def wait_for_connack(
    host: str, port: int, alive: Callable[[], bool], log: Callable[[], str], timeout: float
) -> None:
    """Until the broker on ``port`` accepts an MQTT connection; fails at once if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        code = connack(host, port)
        if code == 0:
            return
        if not alive():
            raise BrokerStartError(f"the broker on port {port} exited while starting\n{log()}")
        if time.monotonic() > deadline:
            raise BrokerStartError(f"no CONNACK from {host}:{port} in {timeout:.0f} s\n{log()}")
        time.sleep(0.1)  # polling a listener that has no event to wait on


def _status_field(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_of(pids: list[int]) -> int:
    """Resident bytes of these processes (those gone count 0)."""
    return sum(_status_field(pid, "VmRSS") * 1024 for pid in pids)


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def session_pids(sid: int) -> list[int]:
    """Every process in session ``sid`` (a broker started with ``start_new_session``)."""
    found = []
    for pid in _all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(pid)
    return found


def pids_with_env(name: str, value: str, exe: str) -> list[int]:
    """Processes whose executable's name is ``exe`` and whose environment has ``name=value``."""
    wanted = f"{name}={value}".encode()
    found = []
    for pid in _all_pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != exe:
                continue
            if wanted in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no {path})"


def _end(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process group; SIGKILL it if it is still there after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Whatever the group still holds (a child the leader left behind) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(10)


def _binary(name: str, *extra_dirs: str) -> str:
    path = ":".join([*extra_dirs, "/usr/sbin", "/usr/local/sbin", os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        raise BrokerStartError(f"{name} is not installed")
    return found


class _Broker:
    name = "broker"
    host = HOST
    mqtt_port = 0
    startup_s = 0.0

    @property
    def port(self) -> int:
        return self.mqtt_port

    @property
    def urls(self) -> list[str]:
        return [f"mqtt://{self.host}:{self.mqtt_port}"]

    def rss_bytes(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Mosquitto(_Broker):
    """:class:`compiler.fleet.broker.MosquittoBroker` (persistent, as a production broker is)
    behind the same interface as the others."""

    name = "mosquitto"

    def __init__(self, tmp: Path | None = None):
        started = time.monotonic()
        self.broker = MosquittoBroker(persistent=True)
        self.broker.start()
        self.mqtt_port = self.broker.port
        try:
            wait_for_connack(self.host, self.port, lambda: True, self._log, START_TIMEOUT_S)
        except BrokerStartError:
            self.broker.close()
            raise
        self.startup_s = time.monotonic() - started

    def _log(self) -> str:
        return _tail(self.broker.log_path)

    def rss_bytes(self) -> int:
        config = str(self.broker.config_path).encode()
        pids = []
        for pid in _all_pids():
            try:
                if config in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    pids.append(pid)
            except OSError:
                continue
        return rss_of(pids)

    def close(self) -> None:
        self.broker.close()


RABBITMQ_CONF = """\
listeners.tcp.1 = {host}:{amqp}
mqtt.listeners.tcp.1 = {host}:{mqtt}
mqtt.allow_anonymous = true
mqtt.default_user = guest
mqtt.default_pass = guest
loopback_users = none
disk_free_limit.absolute = 1MB
log.file.level = info
log.console = false
"""


class RabbitMQ(_Broker):
    """``rabbitmq-server`` with the MQTT plugin: its own node name, cookie (``HOME``), Mnesia,
    log, config and plugin files under ``tmp``, and free ports for AMQP, MQTT, Erlang
    distribution and its own epmd (``ERL_EPMD_PORT``), so a system RabbitMQ is left alone."""

    name = "rabbitmq"

    def __init__(self, tmp: Path):
        self.dir = Path(tmp) / f"rabbitmq-{secrets.token_hex(3)}"
        home = self.dir / "home"
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        self.node = f"edgewise-{secrets.token_hex(4)}@localhost"
        self.amqp_port, self.mqtt_port = free_port(), free_port()
        self.dist_port, self.epmd_port = free_port(), free_port()
        (self.dir / "rabbitmq.conf").write_text(
            RABBITMQ_CONF.format(host=self.host, amqp=self.amqp_port, mqtt=self.mqtt_port)
        )
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
        }
        self.output = self.dir / "server.out"
        # Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user (who could not read
        # these folders); /usr/lib/rabbitmq/bin holds the real script.
        server = _binary("rabbitmq-server", "/usr/lib/rabbitmq/bin")
        self.ctl = _binary("rabbitmqctl", "/usr/lib/rabbitmq/bin")
        started = time.monotonic()
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [server], env=self.env, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_for_connack(
                self.host, self.mqtt_port, lambda: self.proc.poll() is None, self._log,
                START_TIMEOUT_S,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started

    def _log(self) -> str:
        logs = sorted((self.dir / "log").glob("*.log"))
        return _tail(self.output) + "".join(_tail(p) for p in logs)

    def _epmd(self) -> list[int]:
        return pids_with_env("ERL_EPMD_PORT", str(self.epmd_port), "epmd")

    def rss_bytes(self) -> int:
        return rss_of(session_pids(self.proc.pid) + self._epmd())

    def ctl_run(self, *args: str, timeout: float = 30) -> str:
        """``rabbitmqctl -n NODE ARGS`` against this node; its output."""
        run = subprocess.run(
            [self.ctl, "-n", self.node, *args], env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {run.stdout}{run.stderr}")
        return run.stdout

    def close(self) -> None:
        # SIGTERM to the node's process group is a clean `init:stop()` (about a second); it
        # leaves the epmd it started (a daemon in a session of its own), which goes by its port.
        _end(self.proc)
        for pid in self._epmd():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def _nats_config(
    name: str, client: int, mqtt: int, http: int, store: Path, cluster: str = "", replicas: int = 1
) -> str:
    return (
        f'server_name: "{name}"\nlisten: "{HOST}:{client}"\nhttp: "{HOST}:{http}"\n'
        f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 256MB\n}}\n'
        f'mqtt {{\n  listen: "{HOST}:{mqtt}"\n  stream_replicas: {replicas}\n}}\n{cluster}'
    )


class _NatsNode:
    """One ``nats-server`` process with a JetStream store and an MQTT listener."""

    def __init__(
        self, root: Path, name: str, cluster: Callable[[int], str] | None = None, replicas: int = 1
    ):
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.name = name
        self.client_port, self.mqtt_port, self.http_port = free_port(), free_port(), free_port()
        self.cluster_port = free_port()
        self.config = self.dir / "nats.conf"
        self.log = self.dir / "nats.log"
        self._cluster, self._replicas = cluster, replicas
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cluster = self._cluster(self.cluster_port) if self._cluster else ""
        ports = (self.client_port, self.mqtt_port, self.http_port)
        self.config.write_text(
            _nats_config(self.name, *ports, self.dir / "js", cluster, self._replicas)
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [_binary("nats-server"), "-c", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        wait_for_connack(HOST, self.mqtt_port, self.alive, lambda: _tail(self.log), timeout)

    def monitor(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}{path}", timeout=5) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    def rss_bytes(self) -> int:
        return rss_of([self.proc.pid]) if self.alive() and self.proc else 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            _end(self.proc)


class NatsServer(_Broker):
    """One ``nats-server`` (JetStream on, which its MQTT listener needs) on free ports, with
    monitoring on ``http_port`` (``/connz``, ``/jsz``)."""

    name = "nats"

    def __init__(self, tmp: Path):
        self.dir = Path(tmp) / f"nats-{secrets.token_hex(3)}"
        self.node = _NatsNode(self.dir, f"edgewise-{secrets.token_hex(3)}")
        self.mqtt_port, self.http_port = self.node.mqtt_port, self.node.http_port
        started = time.monotonic()
        self.node.start()
        try:
            self.node.wait_ready(START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started

    def monitor(self, path: str) -> dict:
        return self.node.monitor(path)

    def rss_bytes(self) -> int:
        return self.node.rss_bytes()

    def close(self) -> None:
        self.node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class NatsCluster(_Broker):
    """``nodes`` nats-server routed to each other on loopback, JetStream on each, the MQTT
    retained and session streams replicated to every node (``stream_replicas``), an MQTT listener
    and monitoring on each. ``mqtt_port`` is the first node's; ``urls`` lists them all."""

    name = "nats-cluster"

    def __init__(self, tmp: Path, nodes: int = 3, tries: int = 3):
        """``tries``: a port :func:`free_port` found free can be taken (by any process) before
        the node binds it; the node then exits "address already in use", and the cluster starts
        again on new ports."""
        started = time.monotonic()
        for attempt in range(1, tries + 1):
            try:
                self._start(Path(tmp), nodes)
                break
            except BrokerStartError:
                taken = any("address already in use" in _tail(n.log) for n in self.nodes)
                shutil.rmtree(self.dir, ignore_errors=True)
                if attempt == tries or not taken:
                    raise
        self.startup_s = time.monotonic() - started

    def _start(self, tmp: Path, nodes: int) -> None:
        self.dir = tmp / f"nats-cluster-{secrets.token_hex(3)}"
        cluster = f"edgewise-{secrets.token_hex(3)}"
        self.nodes: list[_NatsNode] = []

        def routes(port: int) -> str:  # read when a node starts: every port is known by then
            peers = ", ".join(f'"nats-route://{HOST}:{n.cluster_port}"' for n in self.nodes)
            return (
                f'cluster {{\n  name: "{cluster}"\n  listen: "{HOST}:{port}"\n'
                f"  routes: [{peers}]\n}}\n"
            )

        self.nodes = [
            _NatsNode(self.dir, f"{cluster}-n{i + 1}", routes, replicas=min(nodes, 3))
            for i in range(nodes)
        ]
        self.mqtt_port = self.nodes[0].mqtt_port
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_ready(START_TIMEOUT_S)
        except BaseException as exc:
            # On a start error the logs stay for __init__ to read (a port taken?), then go.
            for node in self.nodes:
                node.stop()
            if not isinstance(exc, BrokerStartError):
                shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def urls(self) -> list[str]:
        return [f"mqtt://{self.host}:{n.mqtt_port}" for n in self.nodes]

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: no goodbye to its clients or its peers."""
        self.nodes[i].kill()

    def alive(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.alive()]

    def node_of(self, mqtt_client_id: str) -> list[int]:
        """The live nodes whose ``/connz`` lists an MQTT connection with this client id."""
        found = []
        for i in self.alive():
            connz = self.nodes[i].monitor(f"/connz?mqtt_client={mqtt_client_id}")
            if any(c.get("mqtt_client") == mqtt_client_id for c in connz.get("connections", [])):
                found.append(i)
        return found

    def rss_bytes(self) -> int:
        return sum(n.rss_bytes() for n in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


MAKES: dict[str, Callable[[Path], _Broker]] = {
    "mosquitto": Mosquitto,
    "rabbitmq": RabbitMQ,
    "nats": NatsServer,
    "nats-cluster": NatsCluster,
}


@contextlib.contextmanager
def running(make: str, tmp: Path) -> Iterator[_Broker]:
    """A broker of ``make`` (a key of :data:`MAKES`) for as long as the block runs."""
    broker = MAKES[make](tmp)
    try:
        yield broker
    finally:
        broker.close()
