"""The rollout driver alone: a real SQLite store, the fleet fed with the messages devices send,
the outside world (push, commands, withdrawals) recorded instead of sent, and a clock of our own.
The same behaviour on real agents is in test_rollout.py; these are the cases that are slow or
awkward to stage there."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.contract import Topics
from compiler.rollout.driver import Driver
from compiler.rollout.fleet import Fleet
from compiler.rollout.plan import RolloutSpec, ordered, parse_waves
from compiler.rollout.store import RolloutStore, open_store

TOPICS = Topics()
MODEL = {"name": "digits-cnn", "version": "2.0.0"}


class World:
    """What the driver said to the devices, in order."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str, dict[str, Any]]] = []

    def push(self, spec: RolloutSpec, device: str) -> None:
        self.said.append(("push", device, {}))

    def command(self, device: str, cmd: str, args: dict[str, Any]) -> str:
        self.said.append((cmd, device, args))
        return f"c{len(self.said)}"

    def withdraw(self, device: str) -> None:
        self.said.append(("withdraw", device, {}))

    def to(self, what: str) -> list[str]:
        return [device for kind, device, _ in self.said if kind == what]


class Rig:
    def __init__(self, tmp_path: Path, devices: dict[str, str], waves: str = "1,100%"):
        self.now = 1000.0
        self.store: RolloutStore = open_store(str(tmp_path / "r.db"))
        self.fleet, self.world = Fleet(TOPICS), World()
        self.driver = Driver(self.store, self.fleet, self.world, clock=lambda: self.now)
        for device, state in devices.items():
            self.status(device, state)
        spec = RolloutSpec(
            id="r1", package="/nowhere", name="digits-cnn", version="2.0.0", target="group:g",
            waves=parse_waves(waves), answer_s=60, created_at=self.now,
        )  # fmt: skip
        self.store.create(spec)

    def feed(self, device: str, leaf: str, data: dict[str, Any]) -> None:
        message = SimpleNamespace(
            topic=TOPICS.device(device, leaf), payload=json.dumps(data).encode()
        )
        self.fleet.on_message(None, None, message)  # type: ignore[arg-type]

    def status(self, device: str, state: str, **fields: Any) -> None:
        self.feed(device, "status", {"state": state, "groups": ["g"], **fields})

    def event(self, device: str, state: str, **fields: Any) -> None:
        self.feed(
            device, "events", {"type": "deployment", "state": state, "model": MODEL, **fields}
        )

    def step(self) -> bool:
        rollout = self.store.get("r1")
        assert rollout is not None
        return self.driver.step(rollout, self.fleet.drain())

    def states(self) -> dict[str, str]:
        return {d: r.state for d, r in self.store.devices("r1").items()}


@pytest.fixture
def four(tmp_path: Path) -> Rig:
    return Rig(tmp_path, {"a": "online", "b": "online", "c": "online", "d": "offline"})


def test_an_offline_device_is_skipped_and_the_wave_takes_the_next(four: Rig) -> None:
    order = ordered("r1", "abcd")
    four.step()
    online = [d for d in order if d != "d"]
    assert four.world.to("push") == online[:1]
    if order[0] == "d":  # taken first, recorded offline, and the wave took the next
        assert four.states()["d"] == "offline"
    four.event(online[0], "passed", frames=30, error_rate=0.0, p99_ms=1.5)
    four.step()  # wave 0 complete
    four.step()  # wave 1 fills
    assert sorted(four.world.to("push")) == sorted(online)
    assert four.states()["d"] == "offline"


def test_a_device_silent_past_its_deadline_is_no_answer_and_replaced(four: Rig) -> None:
    four.step()
    first = four.world.to("push")[0]
    four.now += 61
    four.step()
    assert four.states()[first] == "no_answer"
    # the first wave is counted in devices that succeeded or may: it takes the next device
    assert len(four.world.to("push")) == 2 and four.store.get("r1").wave == 0  # type: ignore[union-attr]


def test_a_resumed_driver_catches_up_from_the_retained_status(four: Rig) -> None:
    four.step()
    first = four.world.to("push")[0]
    four.fleet.drain()  # the event was lost while no controller listened ...
    four.status(first, "online", deployment={"state": "passed", "model": MODEL, "p99_ms": 2.0})
    four.fleet.drain()
    four.step()  # ... the status repeats it
    assert four.states()[first] == "succeeded"
    assert four.store.devices("r1")[first].figures["p99_ms"] == 2.0


def test_a_manifest_the_device_refused_unread_fails_it(four: Rig) -> None:
    four.step()
    first = four.world.to("push")[0]
    reason = f"{TOPICS.deploy_device(first)}: signature does not verify"
    four.feed(first, "events", {"type": "deployment", "state": "rejected", "reason": reason})
    four.step()
    rollout = four.store.get("r1")
    assert four.states()[first] == "failed" and rollout is not None
    assert rollout.state == "aborted" and rollout.reason.startswith("failed_pct 100")


def test_an_abort_from_outside_rolls_back_the_wave(four: Rig) -> None:
    four.step()
    first = four.world.to("push")[0]
    four.event(first, "passed", frames=30, error_rate=0.0, p99_ms=1.5)
    four.step()
    four.step()  # wave 1 sent
    wave1 = four.world.to("push")[1:]
    four.event(wave1[0], "active")  # on probation when the operator aborts
    four.step()
    four.store.set_state("r1", "aborted", "aborted by the operator")
    assert four.step()  # rollbacks pending
    assert sorted(four.world.to("withdraw")) == sorted(wave1)
    rollbacks = [(d, a) for kind, d, a in four.world.said if kind == "rollback"]
    assert rollbacks == [(wave1[0], {"reason": "aborted by the operator", "quarantine": True})]
    four.event(wave1[0], "rolled_back", reason="command c9: aborted by the operator")
    four.now += 61  # the other one never went active: no answer, nothing to roll back
    assert not four.step()
    states = four.states()
    assert states[first] == "succeeded" and states[wave1[0]] == "rolled_back"
    assert states[wave1[1]] == "no_answer"


def test_a_paused_rollout_sends_nothing(four: Rig) -> None:
    four.store.set_state("r1", "paused")
    four.step()
    assert four.world.said == [] and four.states() == {}
