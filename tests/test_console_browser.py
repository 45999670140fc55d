"""The console in a browser, end to end: `edgewise serve --console` as an operator runs it, on a
real broker with three real agents, read by Debian's Chromium through Playwright.

One rig for the module (a broker, agents cam-000..cam-002 sending telemetry every 2 s, serve
with rollouts, commands and packages): the tests run in file order and later ones rely on
earlier ones' leftovers only where said (the broker stop comes last but one). Screenshots go to
docs/console/ (the README shows them).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from console_harness import (
    OPERATOR,
    VIEWER,
    ConsoleProcess,
    Users,
    chromium,  # noqa: F401 - a fixture: pytest finds it here
    login,
    screenshot,
)
from control_harness import command_keys
from fleet_harness import Fleet, edgewise
from hostile_run import wait_until

from agent.contract import ClassificationSpec, Package, PreprocessSpec, Topics
from compiler.compile.package import write_package
from compiler.fleet.mqtt import BrokerAddress, connect, disconnect

TELEMETRY_S = 2.0  # the agents' interval: the console calls one stale after 3 of them (6 s)
WAIT_MS = 30_000  # what a page may take to show a change (agents on two busy cores)
HOSTILE_ID = "<img src=x onerror=pwned=1>"  # no "." in a topic level


class ConsoleFleet(Fleet):
    """The fleet harness's agents with telemetry every ``TELEMETRY_S`` (default 10 s)."""

    def config_of(self, device: str) -> str:
        return f"{super().config_of(device)}\n[telemetry]\ninterval_s = {TELEMETRY_S}\n"


@dataclass
class Rig:
    fleet: ConsoleFleet
    console: ConsoleProcess
    db: str
    candidate: Package  # 1.0.1: the same model, another compile report; the rollout's package


def second_package(base: Package, out: Path, key: Path) -> Package:
    """digits-cnn 1.0.1: base's model with a compile report whose int8 stage differs a little,
    so that the packages page has two reports to diff (a compile would cost a minute)."""
    m = base.manifest
    assert isinstance(m.preprocess, PreprocessSpec) and isinstance(
        m.postprocess, ClassificationSpec
    )
    metrics: dict[str, Any] = copy.deepcopy(m.metrics)
    for stage in metrics.get("stages", {}).values():
        stage["accuracy"] = round(stage["accuracy"] - 0.01, 4)
        stage["file_bytes"] = int(stage["file_bytes"] * 0.9)
    golden = base.root / m.golden.path if m.golden is not None else None
    return write_package(
        out, base.model_path, name=m.name, version="1.0.1", input_spec=m.input,
        preprocess=m.preprocess, postprocess=m.postprocess, metrics=metrics, signing_key=key,
        chunk_size=m.model.chunk_size, golden=golden,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rig(compiled, signing_keys, tmp_path_factory) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("console")
    ckeys = command_keys(root / "command-keys")
    packages = root / "packages"
    shutil.copytree(compiled.package.root, packages / compiled.package.root.name)
    candidate = second_package(compiled.package, packages, signing_keys[0])
    fleet = ConsoleFleet(root / "fleet", compiled.package, signing_keys[1], ckeys[1], agents=3)
    fleet.start()
    db = str(root / "rollouts.db")
    console = ConsoleProcess(
        root / "console", fleet.port, Users.write(root / "users"), "--db", db,
        "--key", str(signing_keys[0]), "--command-key", str(ckeys[0]), "--packages", str(packages),
    )  # fmt: skip
    try:
        console.start()
        fleet.wait_serving("1.0.0", 90)
        yield Rig(fleet, console, db, candidate)
    finally:
        console.stop()
        fleet.stop()


@pytest.fixture
def operator(request, rig):  # type: ignore[no-untyped-def]
    page = login(request.getfixturevalue("chromium"), rig.console, OPERATOR)
    yield page
    page.context.close()


@pytest.fixture
def viewer(request, rig):  # type: ignore[no-untyped-def]
    page = login(request.getfixturevalue("chromium"), rig.console, VIEWER)
    yield page
    page.context.close()


def row(page: Any, device: str) -> Any:
    return page.locator(f'table#fleet tr[data-device="{device}"]')


def cell(page: Any, device: str, field: str) -> Any:
    return row(page, device).locator(f'td[data-field="{field}"]')


def health(page: Any, device: str, state: str) -> None:
    """Wait until the row says ``state`` in its class and its health cell."""
    from playwright.sync_api import expect

    expect(row(page, device)).to_have_class(re.compile(rf"\bhealth-{state}\b"), timeout=WAIT_MS)
    expect(cell(page, device, "health")).to_have_text(re.compile(state), timeout=WAIT_MS)


def blank(page: Any, device: str, field: str) -> bool:
    """No figure shown: a stale or offline device's live figures are withheld, not old."""
    return not re.search(r"\d", cell(page, device, field).inner_text())


def test_the_fleet_page_shows_every_device_online_with_its_figures(operator, rig) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect(operator.locator("#user")).to_have_text(f"{OPERATOR} (operator)")
    for device in rig.fleet.devices:
        health(operator, device, "online")
        expect(cell(operator, device, "model")).to_contain_text("digits-cnn 1.0.0")
        expect(cell(operator, device, "fps")).to_have_text(re.compile(r"\d"), timeout=WAIT_MS)
        assert row(operator, device).locator(f'a[href="/devices/{device}"]').count() == 1
    expect(operator.locator('#counts [data-count="online"]')).to_contain_text("3")
    expect(operator.locator("#banner")).to_be_hidden()
    operator.fill("#filter", "cam-001")
    expect(operator.locator("table#fleet tr[data-device]:visible")).to_have_count(1)
    expect(row(operator, "cam-001")).to_be_visible()


def test_the_snapshot_button_shows_the_picture_the_device_took(operator, rig) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    operator.goto(f"{rig.console.url}/devices/cam-000")
    expect(operator.locator("#device-id")).to_have_text("cam-000")
    expect(operator.locator("#health")).to_contain_text("online", timeout=WAIT_MS)
    button = operator.locator('button[data-cmd="snapshot"]')
    expect(button).to_be_enabled()
    button.click()
    operator.wait_for_function(
        "() => { const i = document.querySelector('#snapshot');"
        " return i && i.complete && i.naturalWidth > 0; }",
        timeout=WAIT_MS,
    )
    expect(operator.locator("#replies li[data-command]").first).to_contain_text(
        re.compile("done"), timeout=WAIT_MS
    )
    screenshot(operator, "device")


def test_a_viewer_has_disabled_buttons_and_a_forced_post_refused(viewer, operator, rig) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect(viewer.locator("#user")).to_have_text(f"{VIEWER} (viewer)")
    viewer.goto(f"{rig.console.url}/devices/cam-000")
    expect(viewer.locator("#device-id")).to_have_text("cam-000")
    buttons = viewer.locator("button[data-cmd]")
    expect(buttons.first).to_be_disabled()
    assert buttons.count() >= 5
    for index in range(buttons.count()):
        expect(buttons.nth(index)).to_be_disabled()
    # the same request the page would send, with the session's CSRF token: refused by role
    forced = """async (path) => {
        const me = await (await fetch('/api/me')).json();
        const answer = await fetch(path, {method: 'POST', headers: {
            'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf},
            body: JSON.stringify({cmd: 'ping', args: {}})});
        return [me.role, answer.status, await answer.json()]; }"""
    role, status, body = viewer.evaluate(forced, "/api/devices/cam-000/commands")
    assert (role, status) == ("viewer", 403) and "operator" in body["error"], body
    role, status, body = viewer.evaluate(forced, "/api/rollouts/any/abort")
    assert (role, status) == ("viewer", 403) and "operator" in body["error"], body
    # an operator's same request is taken: the refusal is the role's
    operator.goto(f"{rig.console.url}/devices/cam-000")
    expect(operator.locator("#device-id")).to_have_text("cam-000")
    role, status, body = operator.evaluate(forced, "/api/devices/cam-000/commands")
    assert (role, status) == ("operator", 202) and body["id"], body


def test_a_rollout_that_aborts_shows_its_reason(operator, rig) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    created = edgewise("rollout", "create", str(rig.candidate.root), "--to", "device:cam-000",
                       "--waves", "1", "--abort-if", "p99_ms>0", "--id", "slow-p99",
                       "--db", rig.db)  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    operator.goto(f"{rig.console.url}/rollouts")
    line = operator.locator('table#rollouts tr[data-rollout="slow-p99"]')
    expect(line.locator('td[data-field="state"]')).to_have_text(
        re.compile("aborted"), timeout=120_000
    )
    reason = rig.console.api("/api/rollouts/slow-p99")["reason"]
    assert reason and "p99_ms" in reason, reason
    expect(line.locator('td[data-field="reason"]')).to_contain_text(reason)
    line.click()
    expect(operator.locator("#evidence")).to_contain_text(re.compile(r"cam-000"), timeout=WAIT_MS)
    screenshot(operator, "rollouts")


def test_the_packages_page_lists_the_reports_and_diffs_two(operator, rig) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    operator.goto(f"{rig.console.url}/packages")
    table = operator.locator("table#packages")
    expect(table).to_contain_text("1.0.0")
    expect(table).to_contain_text("1.0.1")
    operator.select_option("#diff-a", "digits-cnn-1.0.0")
    operator.select_option("#diff-b", "digits-cnn-1.0.1")
    diff = operator.locator("table#diff")
    expect(diff).to_contain_text(re.compile("accuracy", re.I), timeout=WAIT_MS)
    expect(diff).to_contain_text(re.compile(r"[-−](0\.01|1\.0)"))  # the accuracy's delta
    # A device reports 1.0.1 installed with its probe's figures: serve's feedback job keeps them
    # beside the package, and the page shows them once reloaded.
    event = {
        "type": "deployment", "state": "installed", "at": 1764547200.0,
        "model": {"name": "digits-cnn", "version": "1.0.1"},
        "backend": "onnxruntime", "latency_p50_ms": 0.061, "latency_p99_ms": 0.2,
    }  # fmt: skip
    client = connect(BrokerAddress("127.0.0.1", rig.fleet.port))
    try:
        client.publish(Topics().events("cam-fb"), json.dumps(event), qos=1).wait_for_publish(5)
    finally:
        disconnect(client)
    # (The rollout test's agents may have reported 1.0.1 already: the cell counts them too.)
    kept = rig.candidate.root / "devices.json"
    assert wait_until(lambda: kept.exists() and "cam-fb" in json.loads(kept.read_text()), 30)
    reported = json.loads(kept.read_text())
    operator.reload()
    devices = operator.locator('tr[data-package="digits-cnn-1.0.1"] td[data-field="devices"]')
    count = f"{len(reported)} device{'s' if len(reported) > 1 else ''}"
    expect(devices).to_have_text(re.compile(rf"^{count} · p50 [0-9.]+–[0-9.]+ ms · .*onnxruntime"))
    screenshot(operator, "packages")


def test_a_silent_device_is_stale_and_a_stopped_one_offline_with_no_figures(operator, rig) -> None:  # type: ignore[no-untyped-def]
    silent = rig.fleet.processes["cam-001"].proc
    for device in rig.fleet.devices:
        health(operator, device, "online")
    os.kill(silent.pid, signal.SIGSTOP)  # no telemetry, and its connection still looks alive
    try:
        assert rig.fleet.processes["cam-002"].stop(15) == 0  # a goodbye: offline at once
        health(operator, "cam-002", "offline")
        health(operator, "cam-001", "stale")
        for device in ("cam-001", "cam-002"):
            for field in ("fps", "p99_ms", "cpu_percent"):
                assert blank(operator, device, field), (device, field)
        assert not blank(operator, "cam-000", "fps")
        screenshot(operator, "fleet")
    finally:
        os.kill(silent.pid, signal.SIGCONT)
    health(operator, "cam-001", "online")  # telemetry again: fresh again


def test_the_banner_shows_while_the_broker_is_gone(operator, rig) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    banner = operator.locator("#banner")
    expect(banner).to_be_hidden()
    rig.fleet.broker.stop()
    try:
        expect(banner).to_be_visible(timeout=WAIT_MS)
        expect(banner).to_contain_text("broker connection lost")
        screenshot(operator, "banner")
    finally:
        rig.fleet.broker.start()
    expect(banner).to_be_hidden(timeout=60_000)  # serve reconnects with a backoff of seconds
    health(operator, "cam-000", "online")


def test_html_in_a_device_id_and_its_status_is_shown_as_text(operator, rig) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = connect(BrokerAddress("127.0.0.1", rig.fleet.port))
    topic = Topics().status(HOSTILE_ID)
    status = {"state": "online", "device": HOSTILE_ID, "groups": ["<b>yard</b>"],
              "model": {"name": "<i>cnn</i>", "version": "1"}}  # fmt: skip
    try:
        client.publish(topic, json.dumps(status), qos=1, retain=True).wait_for_publish(5)
        hostile = operator.locator("table#fleet tr[data-device]").filter(has_text=HOSTILE_ID)
        expect(hostile).to_have_count(1, timeout=WAIT_MS)
        expect(hostile).to_contain_text("<i>cnn</i>")
        assert operator.locator("table#fleet img, table#fleet b, table#fleet i").count() == 0
        hostile.locator("a").first.click()
        expect(operator.locator("#device-id")).to_have_text(HOSTILE_ID)
        assert operator.evaluate("() => window.pwned") is None
        assert operator.locator("#device-id img").count() == 0
    finally:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        disconnect(client)
