"""The pages (static HTML files that fill themselves from the API) and logging in and out.

A page is the same file for everyone; what it shows comes from ``/api/...`` after it loads,
so no user data is ever written into HTML by the server.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .routes_common import COOKIE, CTX, LOCKOUT, PRINCIPAL, SESSIONS, STATIC, Handler, principal

log = logging.getLogger(__name__)

# path -> (the file with the page's <main>, its name: the title and <body data-page>)
PAGES = {
    "/": ("index.html", "fleet"),
    "/devices/{device}": ("device.html", "device"),
    "/rollouts": ("rollouts.html", "rollouts"),
    "/packages": ("packages.html", "packages"),
}
HTML = "text/html; charset=utf-8"


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name, headers={"Content-Type": HTML})


def framed(body: str, name: str) -> str:
    """A page: ``frame.html`` (head, navigation, banner) around its ``<main>``; put together
    once when the app is made, from files only, so no request data ever enters the HTML."""
    frame = (STATIC / "frame.html").read_text().replace("{title}", name).replace("{page}", name)
    return frame.replace("{main}", (STATIC / body).read_text())


async def login_page(request: web.Request) -> web.StreamResponse:
    if request.get(PRINCIPAL) is not None:
        raise web.HTTPSeeOther("/")
    # The reason travels as a fixed key the page's script maps to a sentence (?error=wrong).
    return _page("login.html")


async def login(request: web.Request) -> web.StreamResponse:
    ctx, lockout = request.app[CTX], request.app[LOCKOUT]
    form = await request.post()
    name, password = str(form.get("user", "")).strip(), str(form.get("password", ""))
    if not name or not password:
        raise web.HTTPSeeOther("/login?error=form")
    if lockout.locked_for(name) > 0:
        log.warning("console: login for %r refused: locked out (from %s)", name, request.remote)
        raise web.HTTPSeeOther("/login?error=locked")
    # scrypt takes tens of milliseconds: not on the loop that serves every stream
    user = await asyncio.get_running_loop().run_in_executor(
        None, ctx.users.check_password, name, password
    )
    if user is None:
        lockout.failed(name)
        log.warning("console: failed login for %r from %s", name, request.remote)
        raise web.HTTPSeeOther("/login?error=wrong")
    lockout.succeeded(name)
    session = request.app[SESSIONS].create(user)
    log.info("console: %s (%s) logged in from %s", user.name, user.role, request.remote)
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        COOKIE, session.id, httponly=True, samesite="Strict", secure=ctx.secure, path="/"
    )
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    if who.session is not None:
        request.app[SESSIONS].drop(who.session)
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


def _serve(html: str) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    return handler


def add(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    for path, (body, name) in PAGES.items():
        app.router.add_get(path, _serve(framed(body, name)))
