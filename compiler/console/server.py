"""The ``console`` job of ``edgewise serve``: the web page for the fleet, on its own thread.

The job owns one MQTT connection (the Service connects it), which the Feed subscribes on and the
CommandSender publishes on, and one asyncio loop running aiohttp. Serve's other jobs are
threads that stop on the service's stop event; this one does too: the loop waits for that event
in an executor and then closes the server, whose open SSE streams are cancelled after a short
grace period (a browser reconnects on its own).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from ..errors import InputError

if TYPE_CHECKING:
    from aiohttp import web

    from ..fleet.serve import DeviceTap, JobFactory, ServeOptions
    from .auth import Users

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 2.0


@dataclass(frozen=True)
class ConsoleOptions:
    host: str
    port: int  # 0: any free port (ConsoleServer.port tells which)
    users: Users
    certificate: Path | None = None  # HTTPS: a PEM certificate chain and its key
    certificate_key: Path | None = None
    packages: Path | None = None  # folders NAME-VERSION/ with signed manifests
    results_db: str | None = None  # what `edgewise results --sqlite/--postgres` writes
    stale_after: float | None = None  # None: 3 x each device's telemetry interval

    @property
    def scheme(self) -> str:
        return "https" if self.certificate is not None else "http"


def tls_context(certificate: Path, key: Path | None) -> ssl.SSLContext:
    """A server context from a PEM chain and key; InputError in one line when they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise InputError(
            f"--console-cert {certificate}: cannot load it with its key ({reason}); "
            "give a PEM certificate chain and its private key"
        ) from exc
    return context


class ConsoleServer:
    """Board, Feed and the aiohttp app, served from one thread until the stop event."""

    def __init__(
        self,
        client: mqtt.Client,
        serve: ServeOptions,
        options: ConsoleOptions,
        stop: threading.Event,
        tap: DeviceTap | None = None,
    ):
        from .actions import CommandSender
        from .app import ConsoleContext, make_app
        from .board import Board, BoardOptions
        from .feed import Feed

        self._options, self._stop = options, stop
        self._tls = (
            tls_context(options.certificate, options.certificate_key)
            if options.certificate is not None
            else None
        )
        self.board = Board(serve.topics, BoardOptions(stale_after=options.stale_after))
        self.feed = Feed(client, self.board, serve.topics, tap)
        commands = (
            CommandSender(client, serve.topics, serve.command_key)
            if serve.command_key is not None
            else None
        )
        context = ConsoleContext(
            board=self.board,
            users=options.users,
            commands=commands,
            rollouts_db=serve.db,
            packages=options.packages,
            results_db=options.results_db,
            secure=self._tls is not None,
        )
        self._app: web.Application = make_app(context)
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.port = options.port

    @property
    def url(self) -> str:
        host = (
            self._options.host if self._options.host not in ("", "0.0.0.0", "::") else "localhost"
        )
        return f"{self._options.scheme}://{host}:{self.port}"

    def start(self) -> ConsoleServer:
        """Subscribes, then listens; InputError (one line) when the port cannot be had."""
        self.feed.start()
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            raise InputError(
                f"the console did not start listening within {STARTUP_TIMEOUT_S:.0f} s"
            )
        if self._failure is not None:
            raise self._failure
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported through start(); after it, only logged
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()
            else:
                log.error("the console stopped: %s", exc)

    async def _serve(self) -> None:
        from aiohttp import web

        runner = web.AppRunner(self._app, shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self._options.host, self._options.port, ssl_context=self._tls
            )
            try:
                await site.start()
            except OSError as exc:
                raise _listen_error(self._options.host, self._options.port, exc) from exc
            self.port = _bound_port(runner) or self._options.port
            self._ready.set()
            await asyncio.get_running_loop().run_in_executor(None, self._stop.wait)
        finally:
            await runner.cleanup()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        """Nothing is held past the thread: the connection is the Service's to close."""


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def _listen_error(host: str, port: int, exc: OSError) -> InputError:
    if exc.errno == errno.EADDRINUSE:
        why = "the port is in use; stop what listens there or choose another --console port"
    elif exc.errno == errno.EACCES:
        why = "permission denied; ports below 1024 need privileges (use 8080 and a proxy)"
    else:
        why = f"{exc.strerror or exc}; check --console"
    return InputError(f"the console cannot listen on {host}:{port}: {why}")


def with_console(serve: ServeOptions, options: ConsoleOptions | None) -> ServeOptions:
    """``serve`` with the console job added when ``options`` are given (``--console``)."""
    if options is not None:
        serve.jobs["console"] = console_job(options)
    return serve


def console_job(options: ConsoleOptions) -> JobFactory:
    def start(
        client: mqtt.Client, serve: ServeOptions, stop: threading.Event, tap: DeviceTap
    ) -> ConsoleServer:
        return ConsoleServer(client, serve, options, stop, tap).start()

    return start
