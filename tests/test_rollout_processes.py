"""A rollout as an operator runs one: `edgewise serve --db` and `edgewise rollout` as separate
processes, on real agents — created from the CLI, driven by the serve process, read back by
`rollout status`, and a hand abort of a finished rollout refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_harness import command_keys
from fleet_harness import GROUP, Controller, Fleet, edgewise

from agent.contract import Package


@pytest.fixture
def fleet(compiled, signing_keys, tmp_path: Path) -> Iterator[tuple[Fleet, Controller]]:  # type: ignore[no-untyped-def]
    ckeys = command_keys(tmp_path / "command-keys")
    fleet = Fleet(tmp_path / "fleet", compiled.package, signing_keys[1], ckeys[1], agents=3)
    fleet.start()
    controller = Controller(fleet, str(tmp_path / "rollouts.db"), signing_keys[0], ckeys[0])
    try:
        fleet.wait_serving("1.0.0", 60)
        yield fleet, controller.start()
    finally:
        controller.stop()
        fleet.stop()


def status(controller: Controller, rollout_id: str) -> dict:  # type: ignore[type-arg]
    done = edgewise("rollout", "status", rollout_id, "--db", controller.db, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_rollout_created_from_the_cli_is_driven_by_serve_to_every_device(  # type: ignore[no-untyped-def]
    fleet, v2: Package
) -> None:
    devices, controller = fleet
    created = edgewise("rollout", "create", str(v2.root), "--to", f"group:{GROUP}",
                       "--waves", "1,100%", "--id", "yard-v2", "--db", controller.db)  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    devices.wait_serving("1.1.0", 120)
    assert devices.monitor.wait(lambda: status(controller, "yard-v2")["state"] == "done", 60), (
        controller.output()[-3000:]
    )
    report = status(controller, "yard-v2")
    states = [record["state"] for record in report["devices"]]
    assert sorted(states) == ["succeeded"] * 3, report
    assert [w["devices"] for w in report["per_wave"]] == [1, 2], report
    refused = edgewise("rollout", "abort", "yard-v2", "--db", controller.db)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused
