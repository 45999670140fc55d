"""A local MQTT broker for the demo and tests: Mosquitto when installed, else amqtt in-process."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BrokerError

if TYPE_CHECKING:
    from amqtt.broker import Broker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listening on {host}:{port} after {timeout} s") from exc
            time.sleep(0.05)  # polling a port that has no event to wait on


def mosquitto_binary() -> str | None:
    """Debian installs it in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class MosquittoBroker:
    """A ``mosquitto`` process on its own port and config file, for the lifetime of the object."""

    kind = "mosquitto"

    def __init__(
        self,
        port: int | None = None,
        extra_config: str = "",
        persistent: bool = False,
        config: str | None = None,
    ):
        """``persistent`` keeps retained messages across a restart, as a production broker does.
        ``config`` replaces the generated file entirely (it must listen on ``port``)."""
        self.host, self.port = "127.0.0.1", port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="edgewise-mosquitto-")
        self.config_path = Path(self._dir.name) / "mosquitto.conf"
        persistence = "persistence false\n"
        if persistent:
            # Started as root, mosquitto drops to its own user, which must reach and write here.
            Path(self._dir.name).chmod(0o755)
            store = Path(self._dir.name) / "persist"
            store.mkdir()
            store.chmod(0o1777)
            persistence = f"persistence true\npersistence_location {store}/\n"
        # set_tcp_nodelay: see agent.contract.broker.without_delay (as the shipped config does)
        generated = (
            f"listener {self.port} {self.host}\nallow_anonymous true\nset_tcp_nodelay true\n"
            f"{persistence}"
        )
        self.config_path.write_text(config if config is not None else generated + extra_config)
        self.log_path = Path(self._dir.name) / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MosquittoBroker:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.host, self.port)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


class EmbeddedBroker:
    """amqtt running on its own event loop thread (the demo's fallback without mosquitto)."""

    kind = "amqtt"

    def __init__(self, port: int | None = None):
        self.host, self.port = "127.0.0.1", port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt", daemon=True)
        self._broker: Broker | None = None

    def start(self) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise BrokerError("neither mosquitto nor amqtt is installed") from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        for noisy in ("amqtt", "transitions"):  # they log every state change at INFO
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        self._thread.start()
        # Made on its own loop's thread: amqtt creates futures for "the current loop", and a
        # thread whose loop asyncio.run() once closed (the console's tests) has none.
        asyncio.run_coroutine_threadsafe(self._begin(Broker, config), self._loop).result(10)
        wait_for_port(self.host, self.port)
        return self

    async def _begin(self, make: type[Broker], config: dict[str, object]) -> None:
        broker = self._broker = make(config, loop=self._loop)
        await broker.start()

    async def _shutdown(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._broker = None

    close = stop


def start_local_broker(prefer_embedded: bool = False) -> MosquittoBroker | EmbeddedBroker:
    if mosquitto_binary() and not prefer_embedded:
        return MosquittoBroker().start()
    return EmbeddedBroker().start()
