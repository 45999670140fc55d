"""Server-sent events: ``/api/stream`` for the fleet page, ``/api/devices/{id}/stream`` for a
device page.

Each stream keeps what it last sent and, every tick, sends what differs: a row whose health
moved with the clock alone (stale) is sent like one a message changed; its age is not compared,
the page counts it on. A comment line every 15 s keeps proxies from closing a quiet
stream. A stream ends when the client goes, or when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from .routes_api import device_detail
from .routes_common import CTX, ApiError

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
STOP = web.AppKey("sse_stop", asyncio.Event)


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """What decides whether a row is sent again: all but its age, which the page counts on from
    ``seen_at`` and the server's ``now`` (so a fleet heard from every 2 s costs one row per
    message, not one per message and one per second)."""
    return {key: value for key, value in row.items() if key != "age_s"}


class _Stream:
    def __init__(self, request: web.Request):
        self.request, self.response = request, web.StreamResponse()
        self.response.headers.update(
            {
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache, no-store",
                "X-Accel-Buffering": "no",  # nginx: do not buffer this answer
            }
        )
        self.last_write = time.monotonic()

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def event(self, name: str, data: Any) -> None:
        text = json.dumps(data, separators=(",", ":"), default=str)
        await self.response.write(f"event: {name}\ndata: {text}\n\n".encode())
        self.last_write = time.monotonic()

    async def keepalive(self) -> None:
        if time.monotonic() - self.last_write >= KEEPALIVE_S:
            await self.response.write(b": keepalive\n\n")
            self.last_write = time.monotonic()

    async def wait(self, tick: float) -> bool:
        """Sleep one tick; False once the app is shutting down."""
        stop = self.request.app[STOP]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
        return not stop.is_set()


@contextlib.contextmanager
def _ends(request: web.Request) -> Iterator[None]:
    """How a stream ends: the client went (normal), or a bug (logged; the answer has begun,
    so the client just sees the stream end and reconnects)."""
    try:
        yield
    except ConnectionError:
        pass
    except Exception:
        log.exception("console: stream %s failed", request.path)


async def fleet_stream(request: web.Request) -> web.StreamResponse:
    board, tick = request.app[CTX].board, request.app[CTX].tick
    stream = _Stream(request)
    await stream.open()
    with _ends(request):
        fleet = board.fleet()
        await stream.event("fleet", fleet)
        sent = {row["device"]: _shown(row) for row in fleet["devices"]}
        head = (fleet["broker"], fleet["counts"])
        while await stream.wait(tick):
            fleet = board.fleet()
            rows = {row["device"]: row for row in fleet["devices"]}
            changed = [row for d, row in rows.items() if sent.get(d) != _shown(row)]
            removed = [d for d in sent if d not in rows]
            if changed or removed or (fleet["broker"], fleet["counts"]) != head:
                await stream.event(
                    "rows",
                    {"now": fleet["now"], "version": fleet["version"], "broker": fleet["broker"],
                     "counts": fleet["counts"], "rows": changed, "removed": removed},
                )  # fmt: skip
                sent = {d: _shown(row) for d, row in rows.items()}
                head = (fleet["broker"], fleet["counts"])
            await stream.keepalive()
    return stream.response


async def device_stream(request: web.Request) -> web.StreamResponse:
    ctx, device = request.app[CTX], request.match_info["device"]
    detail = await device_detail(request, device)  # 404 before the stream starts
    stream = _Stream(request)
    await stream.open()
    with _ends(request):
        await stream.event("device", detail)
        version, health = ctx.board.device_version(device), detail["row"]["health"]
        broker = ctx.board.connection()
        while await stream.wait(ctx.tick):
            if ctx.board.connection() != broker:
                broker = ctx.board.connection()
                await stream.event("broker", broker)
            row = ctx.board.row(device)  # its own row, not the whole fleet's, every tick
            now_version = ctx.board.device_version(device)
            if now_version != version or (row is not None and row["health"] != health):
                try:
                    detail = await device_detail(request, device)
                except ApiError:  # the board forgot it (an empty retained status cleared it)
                    continue
                version, health = now_version, detail["row"]["health"]
                await stream.event("device", detail)
            await stream.keepalive()
    return stream.response


async def _stop(app: web.Application) -> None:
    app[STOP].set()


def add(app: web.Application) -> None:
    app[STOP] = asyncio.Event()
    app.on_shutdown.append(_stop)
    app.router.add_get("/api/stream", fleet_stream)
    app.router.add_get("/api/devices/{device}/stream", device_stream)
