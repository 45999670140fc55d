"""Rollouts driven by ``edgewise serve``'s controller (in-process Services) over a small fleet of
real agents on one private Mosquitto: waves, abort and rollback, resume after a stop, pause,
two controllers on one database, an offline device and one that never answers.

The agents are shared by every test of the module (starting them is most of the cost), so each
test rolls out a newer version than the one before: 1.1.0, 1.2.0 ... in file order.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from control_harness import command_keys, commands_section
from device_harness import install
from forge import golden_of, package_from
from helpers import AgentProcess

from agent.contract import Package, Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.fleet.mqtt import BrokerAddress, Subscriber, connect, disconnect
from compiler.fleet.serve import ServeOptions, Service
from compiler.rollout.controller import RolloutController, with_rollouts
from compiler.rollout.plan import AbortRule, Criteria, RolloutSpec, ordered, parse_waves
from compiler.rollout.store import RolloutStore, open_store

TOPICS = Topics()
DEVICES = ("yard-1", "yard-2", "yard-3", "yard-4")
OFFLINE = "yard-off"  # a retained status says offline: skipped and counted
GHOST = "far-ghost"  # a retained status says online, but no agent answers
AGENT = """
[deploy]
fetch_timeout = 10
probe_timeout = 30
probe_memory_mb = 1024
max_model_bytes = 8000000
probation_s = 2

[runtime]
max_fps = 15

[shadow]
sample = 1.0
interval_s = 1

"""


class Watch:
    """Every deployment event of the fleet, from before the first rollout on."""

    def __init__(self, port: int):
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = connect(BrokerAddress("127.0.0.1", port))
        self.client.on_message = self._on_message
        Subscriber(self.client).subscribe([(TOPICS.all_devices("events"), 1)])

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        event = json.loads(msg.payload)
        if event.get("type") == "deployment":
            with self._lock:
                self.events.append((TOPICS.device_of(msg.topic), event))

    def devices_told(self, version: str, state: str = "installed") -> list[str]:
        """Each device once per event in ``state`` for ``version`` (a duplicate shows twice)."""
        with self._lock:
            return sorted(
                d
                for d, e in self.events
                if (e.get("model") or {}).get("version") == version and e["state"] == state
            )


@dataclass
class Fleet:
    broker: MosquittoBroker
    agents: dict[str, AgentProcess]
    watch: Watch
    base: Package
    key: Path
    command_key: Path
    root: Path

    def package(self, version: str) -> Package:
        return package_from(self.base, self.root / "packages", self.key, version=version)

    def service(self, db: Path | str) -> Service:
        options = ServeOptions(
            self.root / "blobs", TOPICS, db=str(db), signing_key=self.key,
            command_key=self.command_key,
        )  # fmt: skip
        address = BrokerAddress("127.0.0.1", self.broker.port)
        return Service(address, with_rollouts(options)).start()

    def logs(self) -> str:
        return "\n".join(f"--- {d}\n{a.output()[-1500:]}" for d, a in self.agents.items())


def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        tick.wait(0.1)


def _retained_status(client: Any, device: str, state: str, groups: list[str]) -> None:
    payload = json.dumps({"state": state, "device": device, "groups": groups, "model": None})
    client.publish(TOPICS.status(device), payload, qos=1, retain=True).wait_for_publish(5)


@pytest.fixture(scope="module")
def fleet(compiled, signing_keys, digits, tmp_path_factory) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    from compiler.recipe.demo import write_agent_config
    from compiler.recipe.video import write_digits_video

    root = tmp_path_factory.mktemp("rollout")
    video = root / "digits.avi"
    write_digits_video(video, digits.test, count=30, frames_per_digit=3, seed=1)
    command_key, command_pub = command_keys(root / "keys")
    broker = MosquittoBroker().start()
    watch = Watch(broker.port)
    agents: dict[str, AgentProcess] = {}
    try:
        for device in DEVICES:
            state = root / device / "state"
            install(compiled.package, state)
            extra = AGENT + commands_section(command_pub)
            config = write_agent_config(
                root / device / "agent.toml", port=broker.port, public_keys=[signing_keys[1]],
                video=video, state=state, device=device, extra=extra,
            )  # fmt: skip
            text = config.read_text().replace("[device]\n", '[device]\ngroups = ["yard"]\n', 1)
            config.write_text(text)
            agents[device] = AgentProcess(config)
        _retained_status(watch.client, OFFLINE, "offline", ["yard"])
        _retained_status(watch.client, GHOST, "online", ["far"])
        fleet = Fleet(broker, agents, watch, compiled.package, signing_keys[0], command_key, root)
        until(lambda: _all_serving(fleet, "1.0.0"), 90, "every agent online on 1.0.0")
        yield fleet
    finally:
        for agent in agents.values():
            agent.stop()
        disconnect(watch.client)
        broker.close()


def _all_serving(fleet: Fleet, version: str, devices: tuple[str, ...] = DEVICES) -> bool:
    service_status = _statuses(fleet)
    return all(
        (service_status.get(d) or {}).get("state") == "online"
        and ((service_status.get(d) or {}).get("model") or {}).get("version") == version
        for d in devices
    )


def _statuses(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Every retained status now (a fresh subscription gets them all)."""
    got: dict[str, dict[str, Any]] = {}
    client = connect(BrokerAddress("127.0.0.1", fleet.broker.port))
    try:
        client.on_message = lambda _c, _u, m: got.__setitem__(
            TOPICS.device_of(m.topic), json.loads(m.payload) if m.payload else {}
        )
        Subscriber(client).subscribe([(TOPICS.all_devices("status"), 0)])
        Subscriber(client).subscribe([(TOPICS.all_devices("nothing"), 0)])  # after the retained
    finally:
        disconnect(client)
    return got


def _spec(fleet: Fleet, rid: str, package: Package, target: str, **fields: Any) -> RolloutSpec:
    values: dict[str, Any] = {
        "id": rid, "package": str(package.root), "name": package.manifest.name,
        "version": package.manifest.version, "target": target, "waves": parse_waves("1,100%"),
        "answer_s": 120.0, "created_at": time.time(),
    }  # fmt: skip
    return RolloutSpec(**{**values, **fields})


def _wave0(store: RolloutStore, rid: str) -> list[str]:
    return [r.state for r in store.devices(rid).values() if r.wave == 0]


def _finished(store: RolloutStore, rid: str) -> bool:
    rollout = store.get(rid)
    return rollout is not None and rollout.state in ("done", "aborted")


def test_waves_take_the_group_in_a_stable_order_and_skip_offline_devices(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "rollouts.db"
    store = open_store(str(db))
    store.create(_spec(fleet, "r-waves", fleet.package("1.1.0"), "group:yard"))
    service = fleet.service(db)
    try:
        until(lambda: _finished(store, "r-waves"), 120, "the rollout finished\n" + fleet.logs())
    finally:
        service.stop()
    rollout, records = store.get("r-waves"), store.devices("r-waves")
    store.close()
    assert rollout is not None and rollout.state == "done", rollout
    assert {d: r.state for d, r in records.items() if d != OFFLINE} == dict.fromkeys(
        DEVICES, "succeeded"
    )
    assert records[OFFLINE].state == "offline"  # skipped and counted, never waited on
    # wave 0 is the first online device in the rollout's order; the rest came in wave 1
    order = [d for d in ordered("r-waves", [*DEVICES, OFFLINE]) if d != OFFLINE]
    assert records[order[0]].wave == 0
    assert all(records[d].wave == 1 for d in order[1:])
    assert all(isinstance(records[d].figures.get("error_rate"), float) for d in DEVICES)
    assert fleet.watch.devices_told("1.1.0") == sorted(DEVICES)  # each exactly once
    assert _all_serving(fleet, "1.1.0")


def test_a_bad_wave_aborts_and_its_devices_roll_back(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "rollouts.db"
    store = open_store(str(db))
    too_slow = (AbortRule(metric="p99_ms", op=">", threshold=1e-6),)  # no board meets it
    store.create(_spec(fleet, "r-bad", fleet.package("1.2.0"), "group:yard", rules=too_slow))
    service = fleet.service(db)
    try:
        until(lambda: _finished(store, "r-bad"), 120, "the rollout aborted\n" + fleet.logs())
        first = next(d for d, r in store.devices("r-bad").items() if r.wave == 0)
        until(
            lambda: store.devices("r-bad")[first].state == "rolled_back",
            60,
            f"{first} rolled back\n{fleet.logs()}",
        )
    finally:
        service.stop()
    rollout, records = store.get("r-bad"), store.devices("r-bad")
    store.close()
    assert rollout is not None and rollout.state == "aborted"
    assert rollout.reason.startswith("p99_ms ") and "over 1 devices" in rollout.reason
    assert rollout.evidence["devices"][0]["device"] == first
    assert isinstance(rollout.evidence["figures"]["p99_ms"], float)
    exposed = [d for d, r in records.items() if r.state != "offline"]
    assert exposed == [first]  # no device beyond wave 1 was ever sent it
    assert fleet.watch.devices_told("1.2.0") == [first]
    assert fleet.watch.devices_told("1.2.0", "rolled_back") == [first]
    until(lambda: _all_serving(fleet, "1.1.0"), 30, "the exposed device back on 1.1.0")


def test_a_stopped_controller_is_resumed_by_the_next(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "rollouts.db"
    store = open_store(str(db))
    store.create(_spec(fleet, "r-resume", fleet.package("1.3.0"), "group:yard"))
    first = fleet.service(db)
    try:
        until(lambda: "sent" in _wave0(store, "r-resume"), 60, "the first wave sent")
    finally:
        first.stop()  # mid-wave: the device is installing or on probation
    assert "sent" in _wave0(store, "r-resume") and "succeeded" not in _wave0(store, "r-resume")
    second = fleet.service(db)
    try:
        until(lambda: _finished(store, "r-resume"), 120, "resumed and finished\n" + fleet.logs())
    finally:
        second.stop()
    rollout, records = store.get("r-resume"), store.devices("r-resume")
    store.close()
    assert rollout is not None and rollout.state == "done", rollout
    assert {r.state for d, r in records.items() if d != OFFLINE} == {"succeeded"}
    assert fleet.watch.devices_told("1.3.0") == sorted(DEVICES)  # nobody was sent it twice


def test_a_paused_rollout_sends_nothing_until_resumed(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "rollouts.db"
    store = open_store(str(db))
    store.create(_spec(fleet, "r-pause", fleet.package("1.4.0"), "group:yard"))
    store.set_state("r-pause", "paused")
    service = fleet.service(db)
    try:
        controller = service.jobs["rollouts"]
        assert isinstance(controller, RolloutController)
        until(lambda: controller.steps >= 5, 30, "the controller looked at it a few times")
        assert store.devices("r-pause") == {}
        store.set_state("r-pause", "running")
        until(lambda: _finished(store, "r-pause"), 120, "resumed and finished\n" + fleet.logs())
    finally:
        service.stop()
    rollout = store.get("r-pause")
    store.close()
    assert rollout is not None and rollout.state == "done"
    assert fleet.watch.devices_told("1.4.0") == sorted(DEVICES)


def test_two_controllers_on_one_database_drive_a_rollout_once(fleet, pg) -> None:  # type: ignore[no-untyped-def]
    store = open_store(pg)  # PostgreSQL: where two controllers on two machines share one
    one, two = fleet.service(pg), fleet.service(pg)
    try:
        store.create(_spec(fleet, "r-two", fleet.package("1.5.0"), "group:yard"))
        until(lambda: _finished(store, "r-two"), 120, "finished\n" + fleet.logs())
        a, b = one.jobs["rollouts"], two.jobs["rollouts"]
        assert isinstance(a, RolloutController) and isinstance(b, RolloutController)
        assert len([c for c in (a, b) if "r-two" in c.driven]) == 1
    finally:
        one.stop()
        two.stop()
    rollout = store.get("r-two")
    store.close()
    assert rollout is not None and rollout.state == "done"
    assert fleet.watch.devices_told("1.5.0") == sorted(DEVICES)


def test_a_device_that_never_answers_is_no_answer_after_the_deadline(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "rollouts.db"
    store = open_store(str(db))
    spec = _spec(fleet, "r-ghost", fleet.package("1.6.0"), "group:far", answer_s=2.0)
    store.create(spec)
    service = fleet.service(db)
    try:
        until(lambda: _finished(store, "r-ghost"), 30, "the deadline passed")
    finally:
        service.stop()
    record = store.devices("r-ghost")[GHOST]
    rollout = store.get("r-ghost")
    store.close()
    assert record.state == "no_answer" and "within 2 s" in record.reason
    assert rollout is not None and rollout.state == "done"  # no rule counts silence here
    assert record.since - spec.created_at >= 2.0


def test_with_agreement_criteria_a_shadow_that_agrees_is_promoted(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "rollouts.db"
    store = open_store(str(db))
    criteria = Criteria(agreement=0.5, min_frames=20)  # the same weights: it agrees on all
    spec = _spec(fleet, "r-shadow", fleet.package("1.7.0"), "device:yard-2", criteria=criteria)
    store.create(spec)
    service = fleet.service(db)
    try:
        until(lambda: _finished(store, "r-shadow"), 90, "promoted\n" + fleet.logs())
    finally:
        service.stop()
    rollout, record = store.get("r-shadow"), store.devices("r-shadow")["yard-2"]
    store.close()
    assert rollout is not None and rollout.state == "done", rollout
    assert record.state == "succeeded", record
    assert isinstance(record.figures["agreement"], float) and record.figures["frames"] >= 20
    assert fleet.watch.devices_told("1.7.0", "staged") == ["yard-2"]
    until(lambda: _all_serving(fleet, "1.7.0", ("yard-2",)), 30, "yard-2 serves 1.7.0")


def test_a_shadow_that_disagrees_fails_unserved_and_aborts(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_shadow_e2e import swapped

    db = tmp_path / "rollouts.db"
    store = open_store(str(db))
    model = swapped(fleet.base.model_path, tmp_path / "swapped.onnx", 3, 8)
    golden = golden_of(fleet.base, model)
    bad = package_from(fleet.base, tmp_path / "bad", fleet.key, version="1.8.0", model=model,
                       golden=golden)  # fmt: skip
    criteria = Criteria(agreement=0.95, min_frames=20)
    store.create(_spec(fleet, "r-disagree", bad, "group:yard", criteria=criteria))
    service = fleet.service(db)
    try:
        until(lambda: _finished(store, "r-disagree"), 90, "aborted\n" + fleet.logs())
    finally:
        service.stop()
    rollout, records = store.get("r-disagree"), store.devices("r-disagree")
    store.close()
    assert rollout is not None and rollout.state == "aborted", rollout
    assert rollout.reason.startswith("failed_pct 100 > 0")
    exposed = [d for d, r in records.items() if r.state != "offline"]
    assert len(exposed) == 1 and records[exposed[0]].state == "failed"
    assert "agreement lower bound" in records[exposed[0]].reason
    assert fleet.watch.devices_told("1.8.0", "staged") == exposed
    assert fleet.watch.devices_told("1.8.0", "active") == []  # never served anywhere


def test_serve_takes_the_rollout_flags(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess

    from helpers import BIN

    serve = subprocess.Popen(
        [str(BIN / "edgewise"), "serve", "--blobs", str(tmp_path / "blobs"),
         "--db", str(tmp_path / "r.db"), "--key", str(fleet.key),
         "--command-key", str(fleet.command_key), "--port", str(fleet.broker.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        assert serve.stdout.readline().rstrip().endswith(f"rollouts from {tmp_path / 'r.db'}")
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    assert open_store(str(tmp_path / "r.db")).list() == []  # the schema is there
