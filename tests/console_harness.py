"""The console's browser tests: Debian's Chromium driven by Playwright, and `edgewise serve
--console` as a process on free ports with a users file (a viewer and an operator, each with a
password, and an operator API token).

Import the fixtures into a test module (``from console_harness import chromium``). Playwright
drives the system's ``/usr/bin/chromium`` (``.ci/run`` installs it); ``playwright install`` is
never run, so no browser is downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import BIN

from compiler.fleet.broker import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"
VIEWER, OPERATOR, ROBOT = "vera", "otto", "robot"  # robot: the operator's API token
STARTUP_S = 60.0


# Module scope: Playwright's sync API keeps an event loop running in this thread while it is
# open, and later tests' asyncio.run() refuses to start inside it.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the session; each test opens its own context (cookies)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Users:
    """A users file with a viewer and an operator (passwords) and an operator token."""

    path: Path
    passwords: dict[str, str] = field(default_factory=dict)
    token: str = ""

    @classmethod
    def write(cls, path: Path) -> Users:
        from compiler.console.auth import hash_password

        passwords = {VIEWER: secrets.token_urlsafe(12), OPERATOR: secrets.token_urlsafe(12)}
        token = secrets.token_urlsafe(24)
        path.write_text(
            "# the browser tests' users\n"
            f"{VIEWER} viewer {hash_password(passwords[VIEWER])}\n"
            f"{OPERATOR} operator {hash_password(passwords[OPERATOR])}\n"
            f"{ROBOT} operator token${hashlib.sha256(token.encode()).hexdigest()}\n"
        )
        return cls(path, passwords, token)


class ConsoleProcess:
    """``edgewise serve --console 127.0.0.1:PORT --users FILE`` on ``broker_port``, with any
    further serve options; ``start()`` returns once the console answers HTTP."""

    def __init__(self, root: Path, broker_port: int, users: Users, *extra: str):
        self.root, self.users = root, users
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.args = [
            "serve", "--blobs", str(root / "blobs"), "--console", f"127.0.0.1:{self.port}",
            "--users", str(users.path), "--host", "127.0.0.1", "--port", str(broker_port),
            *extra,
        ]  # fmt: skip
        self.log = root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConsoleProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "edgewise"), *self.args], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_S
        while not self.answers():
            assert self.proc.poll() is None, (
                f"serve exited {self.proc.returncode}:\n{self.output()}"
            )
            assert time.monotonic() < deadline, f"no console after {STARTUP_S} s:\n{self.output()}"
            time.sleep(0.1)  # a port that does not listen yet has no event to wait on
        return self

    def answers(self) -> bool:
        try:
            return self.request("GET", "/login")[0] == 200
        except OSError:
            return False

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, JSON body or text) of one request; ``token``: a bearer token."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=sent)
            answer = connection.getresponse()
            text = answer.read().decode(errors="replace")
        finally:
            connection.close()
        kind = answer.getheader("Content-Type") or ""
        return answer.status, json.loads(text) if kind.startswith("application/json") else text

    def api(self, path: str) -> Any:
        """GET ``path`` as the operator's token; its JSON (asserting 200)."""
        status, body = self.request("GET", path, token=self.users.token)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def login(browser: Browser, console: ConsoleProcess, user: str) -> Page:
    """A page of a fresh browser context, logged in as ``user`` through the login form, on
    the fleet page."""
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{console.url}/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", console.users.passwords[user])
    page.click("form [type=submit]")
    try:
        page.wait_for_url(f"{console.url}/")
    except PlaywrightError:
        # say what the browser was shown instead (a refusal's one line), not only a timeout
        shown = page.locator("body").inner_text()[:300]
        raise AssertionError(f"login as {user} ended on {page.url}: {shown}") from None
    return page


def screenshot(page: Page, name: str) -> Path:
    """``docs/console/NAME.png`` (the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
