"""What the console's route modules share: the context, who sent a request, errors as one
line, and reading a JSON body. (``app`` assembles them; routes never import ``app``.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .actions import CommandSender
from .auth import Lockout, Role, Sessions, Users
from .board import Board

STATIC = Path(__file__).parent / "static"
COOKIE = "edgewise_session"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on a form
    # POST, which the Origin check must refuse
    "Referrer-Policy": "same-origin",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ConsoleContext:
    board: Board
    users: Users
    commands: CommandSender | None  # None: serve has no --command-key
    rollouts_db: str | None  # None: serve has no --db
    packages: Path | None
    results_db: str | None
    secure: bool = False  # served over TLS: Secure cookies
    tick: float = 0.5  # SSE period


@dataclass(frozen=True)
class Principal:
    """Who sent a request, and how: a cookie session (with its CSRF token) or a bearer token."""

    user: str
    role: Role
    csrf: str | None = None
    session: str | None = None


class ApiError(Exception):
    """An answer other than 2xx, as one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


CTX = web.AppKey("ctx", ConsoleContext)
SESSIONS = web.AppKey("sessions", Sessions)
LOCKOUT = web.AppKey("lockout", Lockout)
# aiohttp 3.12 has typed request keys; older ones take the plain string
PRINCIPAL: Any = (
    web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") else "principal"
)


def principal(request: web.Request) -> Principal:
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:  # the auth middleware runs first: only a public route gets here
        raise ApiError(401, "log in first")
    return found


def require_operator(request: web.Request, what: str) -> Principal:
    """The principal, if an operator; 403 naming the action otherwise."""
    who = principal(request)
    if who.role != "operator":
        raise ApiError(403, f"{what} needs the operator role ({who.user} is a {who.role})")
    return who


def json_error(status: int, message: str) -> web.Response:
    line = " ".join(str(message).split())[:500] or "error"
    return web.json_response({"error": line}, status=status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``); 400 one line otherwise."""
    if not await request.read():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body is a JSON object")
    return body
