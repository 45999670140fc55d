"""``make_app(ctx)``: the console's aiohttp application. Routes live in ``routes_pages``,
``routes_api`` and ``sse``; here are the context they share and the three middlewares every
request goes through, outermost first:

- errors: anything that goes wrong becomes one JSON line ``{"error": ...}`` with its status; an
  unexpected exception is logged with its traceback and answered 500 without it;
- auth: a bearer token or a session cookie makes the request a user's; pages without one go
  to the login page, the API answers 401; a POST with a cookie needs the session's CSRF token
  in ``X-CSRF-Token`` and, when the browser sends an Origin, the same host;
- security headers on every answer (CSP ``default-src 'self'``: no inline script anywhere).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import CompilerError, InputError
from ..fleet.postgres import DatabaseUnavailable
from ..rollout.store import UnknownRollout
from .actions import CommandRefused, CommandSender, CommandUnavailable
from .auth import Lockout, Role, Sessions, Users
from .board import Board
from .packages import UnknownPackage

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "edgewise_session"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
PUBLIC = ("/login", "/static/")
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


# Compiler errors a handler lets through, as HTTP statuses (the most specific first).
_STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (UnknownRollout, 404),
    (UnknownPackage, 404),
    (CommandRefused, 400),
    (CommandUnavailable, 503),
    (DatabaseUnavailable, 503),
    (InputError, 409),  # a state that does not allow the change
    (CompilerError, 503),
)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects
        if exc.status == 404:
            return json_error(404, f"nothing at {request.path}")
        if exc.status == 405:
            return json_error(405, f"{request.method} is not allowed on {request.path}")
        return json_error(exc.status, exc.text or exc.reason)
    except CompilerError as exc:
        status = next(code for kind, code in _STATUSES if isinstance(exc, kind))
        return json_error(status, str(exc))
    except Exception:  # the one place that hides a bug from the user, not from the log
        log.exception("console: %s %s failed", request.method, request.path)
        return json_error(500, "the console failed on this request; its log has the details")


def _identify(request: web.Request) -> Principal | None:
    ctx = request.app[CTX]
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        user = ctx.users.check_token(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(401, "the Authorization header holds no valid bearer token")
        return Principal(user.name, user.role)
    session_id = request.cookies.get(COOKIE)
    session = request.app[SESSIONS].get(session_id) if session_id else None
    if session is None or ctx.users.get(session.user) is None:
        return None
    return Principal(session.user, session.role, session.csrf, session.id)


def _check_csrf(request: web.Request, who: Principal | None) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(403, f"Origin {origin} is not this console ({request.host})")
    if who is None or who.csrf is None:
        return  # a bearer request carries no cookie a browser could send for someone else
    token = request.headers.get("X-CSRF-Token", "")
    if not hmac.compare_digest(token.encode(), who.csrf.encode()):
        raise ApiError(403, "missing or wrong X-CSRF-Token (reload the page)")


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    who = _identify(request)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        _check_csrf(request, who)
    if who is None:
        if request.path == "/login" or request.path.startswith("/static/"):
            return await handler(request)
        if request.path.startswith("/api/"):
            raise ApiError(401, "log in first (a session cookie or Authorization: Bearer TOKEN)")
        raise web.HTTPSeeOther("/login")
    request[PRINCIPAL] = who
    return await handler(request)


async def _headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"


def make_app(ctx: ConsoleContext, sessions: Sessions | None = None) -> web.Application:
    """The console's routes over ``ctx``; ``sessions`` for a test that needs its clock."""
    from . import routes_api, routes_pages, sse

    app = web.Application(middlewares=[errors, auth], client_max_size=64 * 1024)
    app[CTX] = ctx
    app[SESSIONS] = sessions or Sessions()
    app[LOCKOUT] = Lockout()
    app.on_response_prepare.append(_headers)
    routes_pages.add(app)
    routes_api.add(app)
    sse.add(app)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app


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
