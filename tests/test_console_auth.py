"""Who may use the console: the users file and its one-line errors, passwords and tokens,
login with its lockout, bearer tokens, the viewer role refused every action, and CSRF."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from agent.contract import Topics
from compiler.console.app import ConsoleContext, make_app
from compiler.console.auth import (
    Lockout,
    Sessions,
    User,
    Users,
    hash_password,
    load_users,
    new_token,
    user_line,
    verify_password,
)
from compiler.console.board import Board
from compiler.console.routes_common import LOCKOUT
from compiler.errors import InputError

PASSWORD = "correct horse battery"
SECRET = hash_password(PASSWORD, n=2**10)  # cheap for tests; the file may name any cost
TOKEN, TOKEN_SECRET = new_token()
VIEWER_TOKEN, VIEWER_TOKEN_SECRET = new_token()
USERS = Users(
    [
        User("olga", "operator", SECRET),
        User("vic", "viewer", SECRET),
        User("bot", "operator", TOKEN_SECRET),
        User("watcher", "viewer", VIEWER_TOKEN_SECRET),
    ]
)
ACTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("/api/devices/cam-1/commands", {"cmd": "ping"}),
    ("/api/devices/cam-1/commands", {"cmd": "rollback"}),
    ("/api/devices/cam-1/commands", {"cmd": "shadow", "args": {"action": "promote"}}),
    ("/api/rollouts/r1/pause", {}),
    ("/api/rollouts/r1/resume", {}),
    ("/api/rollouts/r1/abort", {"reason": "x"}),
)


# --- the users file --------------------------------------------------------------------------


def test_a_users_file_with_comments_passwords_and_tokens(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(
        "# console users\n\n"
        f"{user_line('olga', 'operator', hash_password('pw one', n=2**10))}  # the lead\n"
        f"{user_line('grafana', 'viewer', TOKEN_SECRET)}\n"
    )
    users = load_users(path)
    assert len(users) == 2
    olga = users.check_password("olga", "pw one")
    assert olga is not None and olga.role == "operator"
    assert users.check_password("olga", "pw two") is None
    assert users.check_password("grafana", TOKEN) is None  # a token is no password
    token_user = users.check_token(TOKEN)
    assert token_user is not None and token_user.name == "grafana"
    assert users.check_token(TOKEN + "x") is None


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("olga operator", "2 words"),
        ("olga admin token$" + "0" * 64, "role 'admin'"),
        ("olga viewer password123", "the secret is scrypt$"),
        ("olga viewer token$abc", "64 lowercase hex"),
        ("olga viewer scrypt$16384$8$1$!!$!!", "base64"),
        ("olga viewer scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "out of bounds"),
        ("<b>x</b> viewer token$" + "0" * 64, "user name"),
    ],
)
def test_a_bad_line_is_named_with_what_is_wrong(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "users"
    path.write_text(f"# first\nvic viewer {VIEWER_TOKEN_SECRET}\n{line}\n")
    with pytest.raises(InputError) as caught:
        load_users(path)
    message = str(caught.value)
    assert f"{path}, line 3:" in message and why in message and "\n" not in message


def test_an_empty_missing_or_repeating_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read it"):
        load_users(tmp_path / "nope")
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(InputError, match=r"no users.*console-user"):
        load_users(tmp_path / "empty")
    (tmp_path / "twice").write_text(f"a viewer {TOKEN_SECRET}\na operator {TOKEN_SECRET}\n")
    with pytest.raises(InputError, match="line 2: user 'a' again"):
        load_users(tmp_path / "twice")


def test_passwords_are_salted_scrypt_and_tokens_random() -> None:
    one, two = hash_password("same"), hash_password("same")
    assert one != two and one.startswith("scrypt$16384$8$1$")
    assert verify_password(one, "same") and not verify_password(one, "Same")
    assert not verify_password("token$" + "0" * 64, "same")
    assert new_token()[0] != new_token()[0]
    with pytest.raises(InputError, match="role"):
        user_line("olga", "root", one)


def test_sessions_expire_and_lockout_lifts() -> None:
    now = [1000.0]
    sessions = Sessions(ttl_s=60, clock=lambda: now[0])
    session = sessions.create(User("olga", "operator", SECRET))
    assert sessions.get(session.id) == session and session.csrf != session.id
    now[0] += 61
    assert sessions.get(session.id) is None
    lockout = Lockout(failures=3, lock_s=30, clock=lambda: now[0])
    for _ in range(2):
        lockout.failed("olga")
    assert lockout.locked_for("olga") == 0
    lockout.failed("olga")
    assert lockout.locked_for("olga") == 30
    now[0] += 31
    assert lockout.locked_for("olga") == 0


# --- over HTTP -------------------------------------------------------------------------------


def context(**fields: Any) -> ConsoleContext:
    board = Board(Topics())
    base: dict[str, Any] = {"board": board, "users": USERS, "commands": None,
                            "rollouts_db": None, "packages": None, "results_db": None}  # fmt: skip
    return ConsoleContext(**{**base, **fields})


@contextlib.asynccontextmanager
async def console(ctx: ConsoleContext) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(ctx))) as client:
        yield client


async def log_in(client: TestClient, user: str, password: str) -> ClientResponse:
    return await client.post(
        "/login", data={"user": user, "password": password}, allow_redirects=False
    )


async def csrf(client: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": (await (await client.get("/api/me")).json())["csrf"]}


def test_login_right_and_wrong_then_lockout() -> None:
    async def body() -> None:
        async with console(context(secure=True)) as client:
            wrong = await log_in(client, "olga", "wrong")
            assert (wrong.status, wrong.headers["Location"]) == (303, "/login?error=wrong")
            assert "edgewise_session" not in wrong.cookies
            assert (await log_in(client, "nobody", "x")).headers["Location"].endswith("wrong")
            assert (await log_in(client, "olga", "")).headers["Location"].endswith("form")
            right = await log_in(client, "olga", PASSWORD)
            assert (right.status, right.headers["Location"]) == (303, "/")
            cookie = right.headers["Set-Cookie"]
            for flag in ("edgewise_session=", "HttpOnly", "SameSite=Strict", "Secure"):
                assert flag in cookie, cookie
            client.app[LOCKOUT].failures = 3
            for _ in range(3):
                await log_in(client, "vic", "guess")
            locked = await log_in(client, "vic", PASSWORD)  # the right one, but locked out
            assert locked.headers["Location"] == "/login?error=locked"
            assert (await log_in(client, "olga", PASSWORD)).headers["Location"] == "/"

    asyncio.run(body())


def test_no_secure_cookie_over_plain_http_and_logout_ends_the_session() -> None:
    async def body() -> None:
        async with console(context()) as client:
            right = await log_in(client, "vic", PASSWORD)
            assert "Secure" not in right.headers["Set-Cookie"]
            me = await (await client.get("/api/me")).json()
            assert (me["user"], me["role"]) == ("vic", "viewer") and me["csrf"]
            assert (await client.get("/login", allow_redirects=False)).status == 303
            assert (await client.post("/logout")).status == 403  # no CSRF token
            response = await client.post("/logout", headers={"X-CSRF-Token": me["csrf"]})
            assert response.status == 200
            assert (await client.get("/api/me")).status == 401

    asyncio.run(body())


def test_bearer_tokens() -> None:
    async def body() -> None:
        async with console(context()) as client:
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            me = await (await client.get("/api/me", headers=bearer)).json()
            assert (me["user"], me["role"], me["csrf"]) == ("bot", "operator", None)
            bad = await client.get("/api/fleet", headers={"Authorization": f"Bearer {TOKEN}x"})
            assert bad.status == 401 and "bearer" in (await bad.json())["error"]
            basic = await client.get("/api/fleet", headers={"Authorization": "Basic eDp5"})
            assert basic.status == 401
            # no cookie, so no CSRF token needed: the request gets to the handler (503: no key)
            sent = await client.post(
                "/api/devices/cam-1/commands", json={"cmd": "ping"}, headers=bearer
            )
            assert sent.status == 503 and "--command-key" in (await sent.json())["error"]

    asyncio.run(body())


@pytest.mark.parametrize("how", ["cookie", "bearer"])
def test_a_viewer_is_refused_every_action(tmp_path: Path, how: str) -> None:
    async def body() -> None:
        async with console(context(rollouts_db=str(tmp_path / "r.db"))) as client:
            if how == "cookie":
                await log_in(client, "vic", PASSWORD)
                headers = await csrf(client)
            else:
                headers = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
            for url, payload in ACTIONS:
                response = await client.post(url, json=payload, headers=headers)
                assert response.status == 403, url
                error = json.loads(await response.text())["error"]
                assert "needs the operator role" in error
            assert (await client.get("/api/fleet", headers=headers)).status == 200

    asyncio.run(body())


def test_csrf_token_and_origin() -> None:
    async def body() -> None:
        async with console(context()) as client:
            await log_in(client, "olga", PASSWORD)
            token = await csrf(client)
            url, payload = "/api/devices/cam-1/commands", {"cmd": "ping"}
            for headers in ({}, {"X-CSRF-Token": "forged"}):
                response = await client.post(url, json=payload, headers=headers)
                assert response.status == 403
                assert "X-CSRF-Token" in (await response.json())["error"]
            evil = {**token, "Origin": "https://evil.example"}
            response = await client.post(url, json=payload, headers=evil)
            assert response.status == 403 and "Origin" in (await response.json())["error"]
            host = client.make_url("/").host
            same = {**token, "Origin": f"http://{host}:{client.port}"}
            response = await client.post(url, json=payload, headers=same)
            assert response.status == 503  # past auth and CSRF: no command key here
            login = await client.post(
                "/login", data={"user": "olga", "password": PASSWORD},
                headers={"Origin": "https://evil.example"}, allow_redirects=False,
            )  # fmt: skip
            assert login.status == 403  # a login from another site's form

    asyncio.run(body())
