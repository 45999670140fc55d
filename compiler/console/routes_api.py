"""The JSON API: who am I, the fleet, one device (and its snapshot), commands, rollouts and
packages. Whatever blocks (a PUBACK, a database, reading manifests) runs in a worker thread."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..fleet.postgres import DatabaseUnavailable
from . import actions, packages
from .results import recent_results
from .routes_common import CTX, ApiError, principal, read_json, require_operator

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _blocking(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(call, *args))


async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response({"user": who.user, "role": who.role, "csrf": who.csrf})


async def fleet(request: web.Request) -> web.Response:
    return web.json_response(request.app[CTX].board.fleet())


async def device_detail(request: web.Request, device: str) -> dict[str, Any]:
    """DEVICE, with the results from ``--results`` when the console has one."""
    ctx = request.app[CTX]
    detail = ctx.board.device(device)
    if detail is None:
        raise ApiError(404, f"no device {device!r} on the board (never heard of)")
    if ctx.results_db is not None:
        try:
            detail["results"] = await _blocking(recent_results, ctx.results_db, device)
        except DatabaseUnavailable as exc:  # the board's own results stay, with why
            detail["results_error"] = str(exc)
    return detail


async def device(request: web.Request) -> web.Response:
    return web.json_response(await device_detail(request, request.match_info["device"]))


async def snapshot(request: web.Request) -> web.Response:
    device = request.match_info["device"]
    found = request.app[CTX].board.snapshot(device)
    if found is None:
        raise ApiError(404, f"no snapshot of {device!r} yet")
    jpeg, _at = found
    # the URL carries ?v=N, so a new snapshot is a new URL: the browser may keep each one
    return web.Response(
        body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


async def command(request: web.Request) -> web.Response:
    require_operator(request, "sending a command")
    ctx, device = request.app[CTX], request.match_info["device"]
    body = await read_json(request)
    if ctx.commands is None:
        raise ApiError(503, "commands are off: serve runs without --command-key")
    if ctx.board.device(device) is None:
        raise ApiError(404, f"no device {device!r} on the board (never heard of)")
    cmd, args = actions.check_command(body.get("cmd"), body.get("args"))
    who = principal(request)
    command_id = await _blocking(ctx.commands.send, device, cmd, args)
    log.info("console: %s sent %s %s to %s", who.user, cmd, command_id, device)
    return web.json_response({"id": command_id}, status=202)


def _rollouts_db(request: web.Request) -> str:
    db = request.app[CTX].rollouts_db
    if db is None:
        raise ApiError(503, "rollouts are off: serve runs without --db")
    return db


async def rollouts(request: web.Request) -> web.Response:
    found = await _blocking(actions.list_rollouts, _rollouts_db(request))
    return web.json_response({"rollouts": found}, dumps=_dumps)


async def rollout(request: web.Request) -> web.Response:
    db, rollout_id = _rollouts_db(request), request.match_info["id"]
    return web.json_response(await _blocking(actions.get_rollout, db, rollout_id), dumps=_dumps)


async def rollout_change(request: web.Request) -> web.Response:
    change = request.match_info["change"]
    who = require_operator(request, f"{change} of a rollout")
    db, rollout_id = _rollouts_db(request), request.match_info["id"]
    body = await read_json(request)
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ApiError(400, "reason is a text of at most 500 characters")
    changed = await _blocking(
        actions.change_rollout, db, rollout_id, change, " ".join(reason.split()), who.user
    )
    log.info("console: %s: %s", who.user, changed.line())
    return web.json_response(
        {"id": rollout_id, "before": changed.before, "after": changed.after,
         "already": changed.already, "message": changed.line()}
    )  # fmt: skip


def _packages_dir(request: web.Request) -> Any:
    folder = request.app[CTX].packages
    if folder is None:
        raise ApiError(503, "packages are off: serve runs without --packages DIR")
    return folder


async def package_list(request: web.Request) -> web.Response:
    found = await _blocking(packages.list_packages, _packages_dir(request))
    return web.json_response({"packages": found})


async def package_diff(request: web.Request) -> web.Response:
    folder = _packages_dir(request)
    a, b = request.query.get("a"), request.query.get("b")
    if not a or not b:
        raise ApiError(400, "name both packages: /api/packages/diff?a=ID&b=ID")
    return web.json_response(await _blocking(packages.diff, folder, a, b))


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def add(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/fleet", fleet)
    app.router.add_get("/api/devices/{device}", device)
    app.router.add_get("/api/devices/{device}/snapshot.jpg", snapshot)
    app.router.add_post("/api/devices/{device}/commands", command)
    app.router.add_get("/api/rollouts", rollouts)
    app.router.add_get("/api/rollouts/{id}", rollout)
    app.router.add_post("/api/rollouts/{id}/{change:pause|resume|abort}", rollout_change)
    app.router.add_get("/api/packages", package_list)
    app.router.add_get("/api/packages/diff", package_diff)
