"""The console's web app over HTTP: pages and API behind auth, SSE streams driven by the Board
(and by the clock alone), snapshots, signed commands through a real broker, rollout changes in
a SQLite rollout store, and errors as one JSON line. Runs aiohttp's own test server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from control_harness import command_keys

from agent.contract import Topics
from agent.contract.commands import open_command
from agent.contract.signing import TrustStore
from compiler.console.actions import CommandSender
from compiler.console.app import ConsoleContext, make_app
from compiler.console.auth import User, Users, hash_password, new_token
from compiler.console.board import Board, BoardOptions
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.rollout.plan import AbortRule, Criteria, RolloutSpec, parse_waves
from compiler.rollout.store import open_store

TOPICS = Topics()
PASSWORD = "correct horse battery"
SECRET = hash_password(PASSWORD)
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
EVIL = '<img src=x onerror="alert(1)">'


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def context(board: Board | None = None, **fields: Any) -> ConsoleContext:
    base: dict[str, Any] = {
        "board": board or Board(TOPICS),
        "users": USERS,
        "commands": None,
        "rollouts_db": None,
        "packages": None,
        "results_db": None,
        "tick": 0.05,
    }
    return ConsoleContext(**{**base, **fields})


@contextlib.asynccontextmanager
async def console(ctx: ConsoleContext) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(ctx))) as client:
        yield client


async def login(client: TestClient, user: str = "olga") -> dict[str, str]:
    """Log in; the headers a page's script sends with a POST (its CSRF token)."""
    response = await client.post(
        "/login", data={"user": user, "password": PASSWORD}, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/"
    me = await (await client.get("/api/me")).json()
    return {"X-CSRF-Token": me["csrf"]}


async def error_of(response: ClientResponse, status: int) -> str:
    """The one line of an error answer, checked to be just that."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    text = await response.text()
    assert "\n" not in text.strip() and "Traceback" not in text
    body = json.loads(text)
    assert list(body) == ["error"] and body["error"]
    return str(body["error"])


def status(device: str, **fields: Any) -> tuple[str, bytes]:
    body = {"state": "online", "device": device, "boot_id": "b1", "groups": ["cams"],
            "model": {"name": "digits-cnn", "version": "1.0.0"}, **fields}  # fmt: skip
    return TOPICS.status(device), json.dumps(body).encode()


def telemetry(device: str, at: float, **fields: Any) -> tuple[str, bytes]:
    body = {"state": "online", "device": device, "boot_id": "b1", "at": at, "interval_s": 1.0,
            "frames_per_second": 12.5, "model": {"name": "digits-cnn", "version": "1.0.0"},
            **fields}  # fmt: skip
    return TOPICS.telemetry(device), json.dumps(body).encode()


def online(board: Board, device: str, clock: Clock) -> None:
    board.take(*status(device))
    board.take(*telemetry(device, clock.now))


class Events:
    """Server-sent events of one response, read with a deadline."""

    def __init__(self, response: ClientResponse):
        self.response = response

    async def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        name, data = None, []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                assert raw, "the stream ended"
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    continue
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data.append(line.removeprefix("data: "))
                elif not line and name is not None:
                    return name, json.loads("\n".join(data))

    async def until(
        self, check: Callable[[str, Any], bool], timeout: float = 5.0
    ) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            name, data = await self.next(max(0.01, deadline - time.monotonic()))
            if check(name, data):
                return name, data


# --- pages, headers, errors --------------------------------------------------------------------


def test_pages_need_a_session_and_carry_security_headers() -> None:
    async def body() -> None:
        async with console(context()) as client:
            for page in ("/", "/devices/cam-1", "/rollouts", "/packages"):
                response = await client.get(page, allow_redirects=False)
                assert response.status == 303 and response.headers["Location"] == "/login"
            assert "log in" in await error_of(await client.get("/api/fleet"), 401)
            login_page = await client.get("/login")
            assert login_page.status == 200 and "text/html" in login_page.content_type
            csp = login_page.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert login_page.headers["X-Content-Type-Options"] == "nosniff"
            # not no-referrer: Chromium then posts the login form with "Origin: null"
            assert login_page.headers["Referrer-Policy"] == "same-origin"
            script = await client.get("/static/console.js")
            assert script.status == 200 and "javascript" in script.content_type
            await login(client)
            for page in ("/", "/devices/cam-1", "/rollouts", "/packages"):
                response = await client.get(page)
                assert response.status == 200 and "text/html" in response.content_type
                assert response.headers["Content-Security-Policy"] == csp

    run(body)


def test_errors_are_one_json_line() -> None:
    async def body() -> None:
        board = Board(TOPICS)
        board.take(*status("cam-1"))
        async with console(context(board)) as client:
            headers = await login(client)
            assert "cam-9" in await error_of(await client.get("/api/devices/cam-9"), 404)
            await error_of(await client.get("/api/nothing/here"), 404)
            assert "not JSON" in await error_of(
                await client.post("/api/devices/cam-1/commands", data="{", headers=headers), 400
            )
            assert "--command-key" in await error_of(
                await client.post(
                    "/api/devices/cam-1/commands", json={"cmd": "ping"}, headers=headers
                ),
                503,
            )
            assert "--db" in await error_of(await client.get("/api/rollouts"), 503)
            assert "--packages" in await error_of(await client.get("/api/packages"), 503)
            await error_of(await client.put("/api/fleet", headers=headers), 405)

    run(body)


def test_a_bug_in_a_handler_is_a_500_line_without_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    board = Board(TOPICS)

    def broken() -> dict[str, Any]:
        raise RuntimeError("secret internals /etc/edgewise")

    board.fleet = broken  # type: ignore[method-assign]

    async def body() -> None:
        async with console(context(board)) as client:
            await login(client)
            response = await client.get("/api/fleet")
            line = await error_of(response, 500)
            assert "secret internals" not in line and "RuntimeError" not in line

    run(body)
    assert "secret internals" in caplog.text  # the log keeps what the user does not see


def test_user_text_arrives_as_text() -> None:
    """An event reason or a group with HTML in it is a JSON string, not markup; the pages put
    data into the DOM with textContent only (checked on the script below)."""

    async def body() -> None:
        board = Board(TOPICS)
        board.take(*status("cam-1", groups=[EVIL]))
        event = {"device": "cam-1", "boot_id": "b1", "at": 1.0, "kind": "deployment",
                 "state": "failed", "reason": EVIL}  # fmt: skip
        board.take(TOPICS.events("cam-1"), json.dumps(event).encode())
        async with console(context(board)) as client:
            await login(client)
            response = await client.get("/api/devices/cam-1")
            assert response.content_type == "application/json"
            detail = await response.json()
            assert detail["row"]["groups"] == [EVIL]
            assert detail["events"][0]["reason"] == EVIL

    run(body)


STATIC = Path(__file__).resolve().parents[1] / "compiler" / "console" / "static"


def test_pages_never_turn_data_into_markup() -> None:
    script = (STATIC / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    for page in STATIC.glob("*.html"):
        html = page.read_text()
        # CSP default-src 'self': no inline script, handler, style, or anything from elsewhere
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], page.name
        assert not re.search(r"\son[a-z]+=", html), page.name
        assert " style=" not in html and "<style" not in html, page.name
        assert not re.search(r"(src|href)=\"(https?:)?//", html), page.name


# --- the fleet stream and the device's -------------------------------------------------------


def test_fleet_stream_sends_the_fleet_then_changed_rows_and_health_moved_by_the_clock() -> None:
    clock = Clock()
    board = Board(TOPICS, BoardOptions(), clock=clock)
    online(board, "cam-1", clock)

    async def body() -> None:
        async with console(context(board)) as client:
            await login(client)
            response = await client.get("/api/stream")
            assert response.content_type == "text/event-stream"
            events = Events(response)
            name, fleet = await events.next()
            assert name == "fleet" and [r["device"] for r in fleet["devices"]] == ["cam-1"]
            assert fleet["devices"][0]["health"] == "online"
            online(board, "cam-2", clock)  # a message: cam-2 is new
            _, rows = await events.until(lambda n, d: n == "rows")
            assert [r["device"] for r in rows["rows"]] == ["cam-2"]
            assert rows["counts"]["online"] == 2 and rows["removed"] == []
            clock.now += 10  # nothing heard for 10 s with interval 1 s: both stale
            _, rows = await events.until(
                lambda n, d: n == "rows" and len(d["rows"]) == 2, timeout=5
            )
            assert {r["health"] for r in rows["rows"]} == {"stale"}
            assert {r["fps"] for r in rows["rows"]} == {None}
            assert rows["counts"]["stale"] == 2
            board.broker(False, "connection refused")
            _, rows = await events.until(lambda n, d: not d["broker"]["connected"])
            assert rows["broker"]["detail"] == "connection refused"

    run(body)


def test_device_stream_sends_the_device_again_when_it_changes_and_the_broker_state() -> None:
    clock = Clock()
    board = Board(TOPICS, BoardOptions(), clock=clock)
    online(board, "cam-1", clock)

    async def body() -> None:
        async with console(context(board)) as client:
            await login(client)
            assert "cam-9" in await error_of(await client.get("/api/devices/cam-9/stream"), 404)
            events = Events(await client.get("/api/devices/cam-1/stream"))
            name, detail = await events.next()
            assert name == "device" and detail["row"]["health"] == "online"
            assert detail["replies"] == []
            reply = {"id": "c0ffee0000000001", "state": "done", "result": {"pong": 1.0},
                     "at": clock.now}  # fmt: skip
            board.take(TOPICS.replies("cam-1"), json.dumps(reply).encode())
            _, detail = await events.until(lambda n, d: n == "device" and d["replies"])
            assert detail["replies"][0]["id"] == "c0ffee0000000001"
            board.broker(False, "gone")
            name, broker = await events.until(lambda n, d: n == "broker")
            assert broker["connected"] is False
            clock.now += 60  # the clock alone: the device goes stale
            _, detail = await events.until(lambda n, d: n == "device")
            assert detail["row"]["health"] == "stale"

    run(body)


def jpeg() -> bytes:
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    assert ok
    return bytes(data)


def test_snapshot_is_served_as_jpeg() -> None:
    board = Board(TOPICS)
    board.take(*status("cam-1"))
    picture = jpeg()
    board.take(TOPICS.snapshot("cam-1"), picture, retained=True)

    async def body() -> None:
        async with console(context(board)) as client:
            await login(client)
            detail = await (await client.get("/api/devices/cam-1")).json()
            assert detail["snapshot"]["size"] == len(picture)
            response = await client.get(detail["snapshot"]["url"])
            assert response.status == 200 and response.content_type == "image/jpeg"
            assert await response.read() == picture
            await error_of(await client.get("/api/devices/cam-2/snapshot.jpg"), 404)

    run(body)


# --- commands through a real broker ----------------------------------------------------------


def test_commands_are_signed_published_and_refused(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    key, public = command_keys(tmp_path / "keys")
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    sender_client, watcher = connect(address), connect(address)
    received: queue.Queue[Any] = queue.Queue()
    watcher.on_message = lambda _c, _u, msg: received.put(msg)
    Subscriber(watcher).subscribe([(TOPICS.commands_device("cam-1"), 1)])
    board = Board(TOPICS)
    board.take(*status("cam-1"))
    ctx = context(board, commands=CommandSender(sender_client, TOPICS, key))

    async def body() -> None:
        async with console(ctx) as client:
            headers = await login(client)
            url = "/api/devices/cam-1/commands"
            body = {"cmd": "shadow", "args": {"action": "promote"}}
            response = await client.post(url, json=body, headers=headers)
            assert response.status == 202, await response.text()
            command_id = (await response.json())["id"]
            message = await asyncio.to_thread(received.get, True, 10)
            opened = open_command(
                bytes(message.payload), TrustStore.from_files([public]), {"device:cam-1"},
                time.time(),
            )  # fmt: skip
            assert (opened.id, opened.cmd, opened.args) == (command_id, "shadow", body["args"])
            # mosquitto speaks MQTT 5: the reply can be matched without opening the envelope
            assert bytes(message.properties.CorrelationData) == command_id.encode()
            assert "sends" in await error_of(
                await client.post(url, json={"cmd": "config"}, headers=headers), 400
            )
            assert "quality" in await error_of(
                await client.post(
                    url, json={"cmd": "snapshot", "args": {"quality": 500}}, headers=headers
                ),
                400,
            )
            assert "'x'" in await error_of(
                await client.post(url, json={"cmd": "ping", "args": {"x": 1}}, headers=headers),
                400,
            )
            await error_of(
                await client.post("/api/devices/cam-9/commands", json={"cmd": "ping"},
                                  headers=headers), 404,
            )  # fmt: skip
            await asyncio.to_thread(disconnect, sender_client)
            assert "broker" in await error_of(
                await client.post(url, json={"cmd": "ping"}, headers=headers), 503
            )
            assert received.empty()  # nothing refused went out

    try:
        run(body)
    finally:
        disconnect(watcher)


# --- rollouts ------------------------------------------------------------------------------------


def rollout_spec(rollout_id: str = "digits-1_1_0-ab12") -> RolloutSpec:
    return RolloutSpec(
        id=rollout_id,
        package="/packages/digits-cnn-1.1.0",
        name="digits-cnn",
        version="1.1.0",
        target="group:cams",
        waves=parse_waves("1,10%,50%"),
        criteria=Criteria(),
        rules=(AbortRule(metric="failed_pct", op=">", threshold=0, min_devices=1),),
        answer_s=120,
        created_at=1000.0,
    )


def test_rollouts_list_pause_resume_abort(tmp_path: Path) -> None:
    db = str(tmp_path / "rollouts.db")
    with open_store(db) as store:
        store.create(rollout_spec())

    async def body() -> None:
        async with console(context(rollouts_db=db)) as client:
            headers = await login(client)
            listed = (await (await client.get("/api/rollouts")).json())["rollouts"]
            assert [(r["id"], r["state"], r["wave"]) for r in listed] == [
                ("digits-1_1_0-ab12", "running", 1)
            ]
            one = await (await client.get("/api/rollouts/digits-1_1_0-ab12")).json()
            assert one["per_wave"][0]["size"] == "1"
            base = "/api/rollouts/digits-1_1_0-ab12"

            async def change(action: str, reason: str = "") -> Any:
                response = await client.post(f"{base}/{action}", json={"reason": reason},
                                             headers=headers)  # fmt: skip
                assert response.status == 200, await response.text()
                return await response.json()

            assert (await change("pause"))["after"] == "paused"
            assert (await change("pause"))["already"] is True
            assert (await change("resume"))["after"] == "running"
            aborted = await change("abort", EVIL)
            assert (aborted["before"], aborted["after"]) == ("running", "aborted")
            one = await (await client.get(base)).json()
            assert one["reason"] == EVIL and one["evidence"]["by"] == "console user olga"
            line = await error_of(await client.post(f"{base}/resume", headers=headers), 409)
            assert "aborted" in line and "paused" in line
            await error_of(await client.post("/api/rollouts/nope/pause", headers=headers), 404)
            await error_of(await client.get("/api/rollouts/nope"), 404)
            await error_of(await client.post(f"{base}/explode", headers=headers), 404)

    run(body)
    with open_store(db) as store:
        assert store.get("digits-1_1_0-ab12").state == "aborted"  # type: ignore[union-attr]


def test_rollouts_of_a_database_not_made_yet_are_none(tmp_path: Path) -> None:
    db = tmp_path / "none-yet.db"

    async def body() -> None:
        async with console(context(rollouts_db=str(db))) as client:
            headers = await login(client)
            assert await (await client.get("/api/rollouts")).json() == {"rollouts": []}
            await error_of(await client.post("/api/rollouts/r1/abort", headers=headers), 404)

    run(body)
    assert not db.exists()  # reading did not make an empty database


# --- results from the results store ---------------------------------------------------------------


def test_device_results_come_from_the_results_store(tmp_path: Path) -> None:
    from compiler.fleet.results import SqliteSink

    sink = SqliteSink(tmp_path / "results.db")
    for seq in range(3):
        sink.write({"id": f"r{seq}", "device": "cam-1", "seq": seq, "captured_at": 100.0 + seq,
                    "label": str(seq), "score": 0.9})  # fmt: skip
    sink.write({"id": "x", "device": "cam-2", "seq": 0, "captured_at": 500.0, "label": "other"})
    sink.close()
    board = Board(TOPICS)
    board.take(*status("cam-1"))

    async def body() -> None:
        ctx = context(board, results_db=str(tmp_path / "results.db"))
        async with console(ctx) as client:
            await login(client)
            detail = await (await client.get("/api/devices/cam-1")).json()
            assert [r["label"] for r in detail["results"]] == ["2", "1", "0"]
        ctx = context(board, results_db=str(tmp_path / "missing.db"))
        async with console(ctx) as client:
            await login(client)
            detail = await (await client.get("/api/devices/cam-1")).json()
            assert "missing.db" in detail["results_error"]

    run(body)
