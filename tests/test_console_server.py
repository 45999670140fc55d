"""The console as a job of ``edgewise serve``, in process: HTTPS from --console-cert, a port
already taken refused in one line, and the page live from serve's one device subscription."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.contract import Topics
from compiler.console.auth import User, Users, new_token
from compiler.console.server import ConsoleOptions, with_console
from compiler.errors import InputError
from compiler.fleet.certs import create_ca, issue
from compiler.fleet.mqtt import BrokerAddress
from compiler.fleet.serve import ServeOptions, Service

TOKEN, SECRET = new_token()
USERS = Users([User("bot", "viewer", SECRET)])


def serve(mosquitto, tmp_path: Path, **console: object) -> Service:  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {"host": "127.0.0.1", "port": 0, "users": USERS, **console}
    options = ConsoleOptions(**fields)  # type: ignore[arg-type]
    serve_options = with_console(ServeOptions(tmp_path / "blobs"), options)
    return Service(BrokerAddress(mosquitto.host, mosquitto.port), serve_options).start()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = create_ca(tmp_path / "pki")
    server = issue(ca, "console", tmp_path / "pki", server_names=["127.0.0.1", "localhost"])
    return ca.cert, server.cert, server.key


@pytest.fixture
def https(mosquitto, tmp_path: Path, pki: tuple[Path, Path, Path]) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    _, cert, key = pki
    service = serve(mosquitto, tmp_path, certificate=cert, certificate_key=key)
    yield service
    service.stop()


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_https_with_the_given_certificate(https: Service, pki: tuple[Path, Path, Path]) -> None:
    ca, _, _ = pki
    console = https.jobs["console"]
    assert console.url.startswith("https://")  # type: ignore[attr-defined]
    trusted = ssl.create_default_context(cafile=str(ca))
    status, headers, body = get(f"{console.url}/api/me", trusted)  # type: ignore[attr-defined]
    assert status == 200 and json.loads(body)["user"] == "bot"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    with pytest.raises(urllib.error.URLError):  # not a certificate the client trusts
        get(f"{console.url}/api/me", ssl.create_default_context())  # type: ignore[attr-defined]


def test_a_port_already_taken_is_one_line(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            InputError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"
        ):
            serve(mosquitto, tmp_path, port=port)


def test_a_certificate_that_does_not_load_is_one_line(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InputError, match=r"--console-cert .*cannot load it"):
        serve(mosquitto, tmp_path, certificate=bad, certificate_key=bad)


def test_devices_reach_the_console_through_serves_one_subscription(
    mosquitto, cloud, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    topics = Topics()
    status = {"state": "online", "device": "cam-7", "boot_id": "b1", "groups": ["lobby"]}
    cloud.publish(topics.status("cam-7"), json.dumps(status), qos=1, retain=True).wait_for_publish(
        10
    )
    service = serve(mosquitto, tmp_path)
    try:
        url = service.jobs["console"].url  # type: ignore[attr-defined]
        telemetry = {
            "device": "cam-7",
            "boot_id": "b1",
            "at": time.time(),
            "frames_per_second": 12.5,
            "interval_s": 10,
        }
        cloud.publish(topics.telemetry("cam-7"), json.dumps(telemetry), qos=1).wait_for_publish(10)
        deadline, row = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            rows = json.loads(get(f"{url}/api/fleet")[2])["devices"]
            row = next((r for r in rows if r["device"] == "cam-7"), None)
            if row is not None and row["fps"] == 12.5:
                break
        assert row is not None and row["health"] == "online" and row["groups"] == ["lobby"]
        assert row["fps"] == 12.5
        # one subscription to all telemetry in the process: the console's client has none
        assert "telemetry" not in " ".join(f for f, _ in service.jobs["console"].feed._filters)  # type: ignore[attr-defined]
    finally:
        service.stop()
