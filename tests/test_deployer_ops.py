"""The deployer's operations in process, on a real ModelStore with real signed packages: boot
(golden-checked like a deployment), activate(version), rollback(), status(), a message on a topic
that is not a deploy topic, and requests posted to the deployer's own thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_harness import install
from forge import package_from

from agent.config import AgentConfig, DeployConfig, DeviceConfig, TrustConfig, VideoConfig
from agent.contract import Package, Topics, TrustStore
from agent.delivery.deployer import Deployer
from agent.delivery.requests import Request
from agent.delivery.store import ModelStore
from agent.errors import ActivationError, DeployerBusy, NotInstalled
from agent.inference.pipeline import HealthStats, ModelSlot

DEVICE = "cam-ops"


class FakeLink:
    """What the deployer asks of its link when no message travels."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.announced = 0
        self.subscribed: list[str] = []

    def announce(self) -> None:
        self.announced += 1

    def subscribe(self, topic: str, callback: Any) -> None:
        self.subscribed.append(topic)


@dataclass
class Rig:
    state: Path
    public_key: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.models = ModelSlot()
        self.store = ModelStore(self.state)
        self.link = FakeLink()
        config = AgentConfig(
            device=DeviceConfig(id=DEVICE, state_dir=self.state),
            trust=TrustConfig(public_keys=(self.public_key,)),
            source=VideoConfig(uri=str(self.state / "unused.avi")),
            deploy=DeployConfig(probation_s=0),
        )
        self.deployer = Deployer(
            config=config,
            link=self.link,  # type: ignore[arg-type]
            trust=TrustStore.from_files([self.public_key]),
            store=self.store,
            models=self.models,
            health=HealthStats(),
            report=self._report,
            stop=self.stop,
        )

    def _report(self, event: dict[str, Any]) -> None:
        self.threads.append(threading.current_thread().name)
        self.events.append(event)

    def serving(self) -> str | None:
        session = self.models.current
        return session.manifest.version if session else None

    def linked(self, link: str) -> str | None:
        slot = self.store.linked(link)
        return slot.name if slot else None


@pytest.fixture
def versions(compiled, signing_keys, tmp_path: Path) -> dict[str, Package]:  # type: ignore[no-untyped-def]
    """1.0.0 (the compiled package) and 1.1.0 (the same model, signed as a newer version)."""
    newer = package_from(compiled.package, tmp_path / "p11", signing_keys[0], version="1.1.0")
    return {"1.0.0": compiled.package, "1.1.0": newer}


@pytest.fixture
def rig(versions, signing_keys, tmp_path: Path) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    """current 1.1.0, previous 1.0.0, booted."""
    state = tmp_path / "state"
    install(versions["1.0.0"], state)
    install(versions["1.1.0"], state)
    made = Rig(state, signing_keys[1])
    made.deployer.boot()
    assert made.serving() == "1.1.0"
    yield made
    made.stop.set()
    if made.deployer.is_alive():
        made.deployer.join(5)


def wrong_golden(compiled, signing_keys, out: Path, version: str) -> Package:  # type: ignore[no-untyped-def]
    """A package signed with golden outputs its model does not give."""
    golden = np.load(compiled.package.root / "golden.npz")
    wrong = (golden["inputs"], golden["outputs"] + 1.0)
    return package_from(compiled.package, out, signing_keys[0], version=version, golden=wrong)


# --- activate ---------------------------------------------------------------------------------


def test_activate_an_installed_version_switches_and_makes_it_current(rig: Rig) -> None:
    event = rig.deployer.activate("1.0.0")
    assert rig.serving() == "1.0.0"
    assert rig.linked("current") == "1.0.0" and rig.linked("previous") == "1.1.0"
    expected = {
        "type": "deployment",
        "state": "active",
        "model": {"name": "digits-cnn", "version": "1.0.0"},
    }
    assert event == expected and rig.events[-1] == expected
    assert rig.link.announced >= 1
    rig.deployer.activate("1.1.0")  # and back again: both slots are kept
    assert rig.serving() == "1.1.0" and rig.linked("previous") == "1.0.0"


def test_activate_what_serves_keeps_the_session(rig: Rig) -> None:
    session = rig.models.current
    rig.deployer.activate("1.1.0")
    assert rig.models.current is session and rig.linked("current") == "1.1.0"


def test_activate_a_version_not_installed_is_a_clear_error(rig: Rig) -> None:
    with pytest.raises(NotInstalled, match=r"digits-cnn 9\.9\.9 is not installed.*1\.0\.0"):
        rig.deployer.activate("9.9.9")
    with pytest.raises(NotInstalled):
        rig.deployer.activate("../1.0.0")  # never a path: only a slot's own name matches
    assert rig.serving() == "1.1.0" and rig.linked("current") == "1.1.0"
    assert rig.events[-1]["state"] == "rejected"
    assert rig.events[-1]["model"] == {"name": "digits-cnn", "version": "../1.0.0"}


def test_activate_a_tampered_slot_fails_verification_and_changes_nothing(rig: Rig) -> None:
    model = rig.state / "models" / "digits-cnn" / "1.0.0" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ActivationError, match=r"1\.0\.0 fails verification: .*sha256"):
        rig.deployer.activate("1.0.0")
    assert rig.serving() == "1.1.0"
    assert rig.linked("current") == "1.1.0" and rig.linked("previous") == "1.0.0"
    assert (
        rig.events[-1]["state"] == "rejected" and "fails verification" in rig.events[-1]["reason"]
    )


def test_activate_a_quarantined_version_is_refused(rig: Rig, versions) -> None:  # type: ignore[no-untyped-def]
    rig.store.quarantine(versions["1.0.0"].manifest, "error rate 50% > 10%")
    with pytest.raises(ActivationError, match=r"quarantined \(error rate 50% > 10%\)"):
        rig.deployer.activate("1.0.0")
    assert rig.serving() == "1.1.0"


def test_activate_a_version_failing_its_golden_check_is_refused(
    compiled, signing_keys, versions, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    install(wrong_golden(compiled, signing_keys, tmp_path / "bad", "0.9.0"), state)
    install(versions["1.0.0"], state)
    rig = Rig(state, signing_keys[1])
    rig.deployer.boot()
    with pytest.raises(ActivationError, match=r"0\.9\.0 cannot serve: golden outputs differ"):
        rig.deployer.activate("0.9.0")
    assert rig.serving() == "1.0.0" and rig.linked("current") == "1.0.0"


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_serves_previous_and_then_there_is_none(rig: Rig) -> None:
    event = rig.deployer.rollback()
    assert rig.serving() == "1.0.0"
    assert rig.linked("current") == "1.0.0" and rig.linked("previous") is None
    assert event == {
        "type": "deployment",
        "state": "rolled_back",
        "model": {"name": "digits-cnn", "version": "1.1.0"},
        "reason": "rollback requested",
        "restored": "1.0.0",
    }
    assert rig.events[-1] == event
    assert rig.store.quarantined(rig.models.current.manifest) is None  # type: ignore[union-attr]
    with pytest.raises(ActivationError, match="no previous version to roll back to"):
        rig.deployer.rollback()
    assert rig.serving() == "1.0.0"


def test_rollback_with_quarantine_keeps_the_package_from_coming_back(rig: Rig, versions) -> None:  # type: ignore[no-untyped-def]
    rig.deployer.rollback(reason="p99 latency 9.00 ms > 5.00 ms", quarantine=True)
    assert rig.store.quarantined(versions["1.1.0"].manifest) == (
        "rolled back: p99 latency 9.00 ms > 5.00 ms"
    )


# --- status -----------------------------------------------------------------------------------


def test_status_tells_what_serves_is_installed_and_quarantined(rig: Rig, versions) -> None:  # type: ignore[no-untyped-def]
    rig.store.quarantine(versions["1.0.0"].manifest, "golden outputs differ")
    v10, v11 = ({"name": "digits-cnn", "version": v} for v in ("1.0.0", "1.1.0"))
    assert rig.deployer.status() == {
        "serving": v11,
        "current": v11,
        "previous": v10,
        "installed": [v10, v11],
        "deployment": None,
        "quarantined": [{**v10, "reason": "golden outputs differ"}],
    }


def test_status_of_an_empty_device(signing_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rig = Rig(tmp_path / "state", signing_keys[1])
    rig.deployer.boot()
    assert rig.deployer.status() == {
        "serving": None,
        "current": None,
        "previous": None,
        "installed": [],
        "deployment": None,
        "quarantined": [],
    }
    with pytest.raises(NotInstalled, match="no model is installed"):
        rig.deployer.activate("1.0.0")
    with pytest.raises(ActivationError, match="no previous version"):
        rig.deployer.rollback()


# --- boot goes through the golden check -------------------------------------------------------


def test_boot_falls_back_to_previous_when_current_fails_its_golden_check(
    compiled, signing_keys, versions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    install(versions["1.0.0"], state)
    install(wrong_golden(compiled, signing_keys, tmp_path / "bad", "1.2.0"), state)
    rig = Rig(state, signing_keys[1])
    with caplog.at_level(logging.INFO, logger="agent"):
        rig.deployer.boot()
    assert rig.serving() == "1.0.0"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "current: " in errors[0] and "golden outputs differ" in errors[0]
    assert "serving previous instead" in errors[0]
    assert "serving installed digits-cnn 1.0.0" in caplog.text
    assert rig.linked("current") == "1.2.0", "boot changes nothing on disk"
    assert not rig.events, "boot reports no deployment"


def test_boot_waits_when_no_installed_model_passes_its_golden_check(
    compiled, signing_keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    install(wrong_golden(compiled, signing_keys, tmp_path / "bad1", "1.2.0"), state)
    install(wrong_golden(compiled, signing_keys, tmp_path / "bad2", "1.3.0"), state)
    rig = Rig(state, signing_keys[1])
    with caplog.at_level(logging.INFO, logger="agent"):
        rig.deployer.boot()
    assert rig.serving() is None
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "waiting for a new one" in errors[0]
    assert "current: " in errors[0] and "previous: " in errors[0]


# --- messages that are not deploy messages ----------------------------------------------------


def test_a_message_on_another_topic_is_rejected_not_raised(rig: Rig) -> None:
    topic = Topics().results(DEVICE)
    rig.deployer.submit(topic, b'{"manifest": {}}')
    assert rig.deployer.boundary.rejected == 1
    assert rig.events[-1]["state"] == "rejected"
    assert rig.events[-1]["reason"] == f"{topic}: not a deploy topic of this device; ignored"
    assert not rig.deployer._inbox.pending(), "nothing is queued for it"
    assert rig.deployer.boundary.call(rig.deployer._handle, "elsewhere/x", b"x")  # the handler
    assert rig.deployer.boundary.rejected == 2 and rig.serving() == "1.1.0"


# --- requests run on the deployer's own thread ------------------------------------------------


def test_operations_run_on_the_deployers_thread_while_it_runs(rig: Rig) -> None:
    rig.deployer.start()
    rig.deployer.activate("1.0.0", timeout=10)
    rig.deployer.rollback(timeout=10)
    assert rig.threads[-2:] == ["deployer", "deployer"]
    assert rig.serving() == "1.1.0" and rig.linked("previous") is None
    assert rig.deployer.status()["serving"] == {"name": "digits-cnn", "version": "1.1.0"}
    with pytest.raises(NotInstalled):  # errors come back to the caller's thread
        rig.deployer.activate("7.0.0", timeout=10)
    assert rig.deployer.is_alive()


def test_a_request_not_taken_up_in_time_never_runs() -> None:
    ran: list[int] = []
    request = Request(lambda: ran.append(1))
    started = time.monotonic()
    with pytest.raises(DeployerBusy, match="nothing changed"):
        request.wait(0.3, alive=lambda: True)
    assert time.monotonic() - started < 2
    request.run()
    assert not ran


def test_a_request_to_a_stopped_deployer_fails_at_once() -> None:
    request = Request(lambda: 1)
    with pytest.raises(DeployerBusy, match="stopped"):
        request.wait(60, alive=lambda: False)


def test_a_request_returns_or_raises_what_the_operation_did() -> None:
    done = Request(lambda: 42)
    threading.Thread(target=done.run).start()
    assert done.wait(5, alive=lambda: True) == 42
    failed: Request[None] = Request(lambda: _raise(ActivationError("no")))
    failed.run()
    with pytest.raises(ActivationError, match="no"):
        failed.wait(5, alive=lambda: True)


def _raise(exc: Exception) -> None:
    raise exc
