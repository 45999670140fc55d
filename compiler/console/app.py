"""``make_app(ctx)``: the console's aiohttp application. Routes live in ``routes_pages``,
``routes_api`` and ``sse`` (what they share, ``ConsoleContext`` included, in ``routes_common``);
here are the three middlewares every request goes through, outermost first:

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
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import CompilerError, InputError
from ..fleet.postgres import DatabaseUnavailable
from ..rollout.store import UnknownRollout
from . import routes_api, routes_pages, sse
from .actions import CommandRefused, CommandUnavailable
from .auth import Lockout, Sessions
from .packages import UnknownPackage
from .routes_common import (
    COOKIE,
    CTX,
    LOCKOUT,
    PRINCIPAL,
    SECURITY_HEADERS,
    SESSIONS,
    STATIC,
    ApiError,
    ConsoleContext,
    Handler,
    Principal,
    json_error,
)

__all__ = ["ConsoleContext", "make_app"]

log = logging.getLogger(__name__)

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
