"""One rollout, one step at a time: what the devices said moves their records, the rules judge
the current wave, and the wave fills, completes and hands over to the next.

Everything said to the outside world goes through ``Actions`` (push, signed command, clearing a
retained deployment), so the controller owns the MQTT client and this module only decides.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import InputError
from .fleet import Fleet, Message
from .plan import FINAL_DEVICE, Abort, DeviceRecord, RolloutSpec, RolloutState, judge, ordered
from .store import Rollout, RolloutStore

IN_FLIGHT = ("sent", "staged")
RUNNING: tuple[RolloutState, ...] = ("running",)
REASON_MAX = 200  # a rollback command's reason (agent: RollbackArgs.reason)


class Actions(Protocol):
    def push(self, spec: RolloutSpec, device: str) -> None: ...

    def command(self, device: str, cmd: str, args: dict[str, Any]) -> str: ...

    def withdraw(self, device: str) -> None: ...


class Driver:
    """Steps every rollout the controller holds; keeps which commands it sent for which device."""

    def __init__(
        self,
        store: RolloutStore,
        fleet: Fleet,
        actions: Actions,
        clock: Callable[[], float] = time.time,
    ):
        self._store, self._fleet, self._actions, self._clock = store, fleet, actions, clock
        self._commands: dict[str, tuple[str, str, str]] = {}  # id -> (rollout, device, cmd)
        self._withdrawn: set[str] = set()  # aborted rollouts whose wave's manifests are cleared
        self._records: dict[str, DeviceRecord] = {}  # the stepped rollout's, kept current

    def step(self, rollout: Rollout, messages: list[Message]) -> bool:
        """Move one rollout on; True while it still needs watching (False: done, or aborted
        with nothing left to roll back)."""
        spec = rollout.spec
        self._records = self._store.devices(spec.id)
        for message in messages:
            record = self._records.get(message.device)  # as the messages before left it
            if record is not None:
                self._take(rollout, record, message)
        self._catch_up(rollout)
        self._deadlines(rollout)
        if rollout.state == "aborted":
            return self._clean_up(rollout)
        if rollout.state == "done":
            return False
        wave = [r for r in self._store.devices(spec.id).values() if r.wave == rollout.wave]
        verdict = judge(spec.rules, wave)
        if verdict is not None:  # paused too: a failing wave is rolled back all the same
            self._abort(rollout, verdict)
            return True
        if rollout.state == "running":
            self._advance(rollout)
        return True

    # --- what devices say ----------------------------------------------------------------------

    def _put(self, spec: RolloutSpec, record: DeviceRecord, **changes: Any) -> DeviceRecord:
        if "state" in changes and changes["state"] != record.state:
            changes["since"] = self._clock()
        new = record.model_copy(update=changes)
        self._store.put_device(spec.id, new)
        self._records[new.device] = new
        return new

    def _take(self, rollout: Rollout, record: DeviceRecord, message: Message) -> None:
        data, spec = message.data, rollout.spec
        if message.leaf == "replies":
            self._reply(rollout, record, data)
            return
        model = {"name": spec.name, "version": spec.version}
        if data.get("type") == "deployment":
            if data.get("model") == model or self._refused_manifest(spec, message):
                self._deployment(rollout, record, data)
        elif data.get("type") == "shadow" and data.get("candidate") == model:
            self._shadow(rollout, record, data)

    def _refused_manifest(self, spec: RolloutSpec, message: Message) -> bool:
        """A manifest the device could not verify names its deploy topic instead of a model."""
        data = message.data
        topic = self._fleet.topics.deploy(f"device:{message.device}")
        return (
            data.get("model") is None
            and data.get("state") == "rejected"
            and str(data.get("reason", "")).startswith(f"{topic}: ")
        )

    def _deployment(self, rollout: Rollout, record: DeviceRecord, event: dict[str, Any]) -> None:
        spec, state = rollout.spec, event.get("state")
        reason = str(event.get("reason") or "")
        if state == "staged" and record.state == "sent":
            self._put(spec, record, state="staged")
        elif state == "rolled_back" and record.figures.get("rollback"):
            self._put(spec, record, state="rolled_back", reason=reason)
        elif state in ("rejected", "rolled_back") and record.state not in FINAL_DEVICE:
            self._put(spec, record, state="failed", reason=reason or str(state))
        elif state in ("active", "passed") and not record.figures.get("rollback"):
            if rollout.state == "aborted":
                self._roll_back(rollout, record)
            elif state == "passed" or record.state == "staged":
                figures = {k: event.get(k) for k in ("frames", "error_rate", "p99_ms")}
                figures = {k: v for k, v in figures.items() if isinstance(v, (int, float))}
                self._put(spec, record, state="succeeded", figures={**record.figures, **figures})
            elif record.state == "sent" and not record.figures.get("active"):
                self._put(spec, record, figures={**record.figures, "active": 1})

    def _shadow(self, rollout: Rollout, record: DeviceRecord, event: dict[str, Any]) -> None:
        spec, criteria = rollout.spec, rollout.spec.criteria
        if record.state != "staged" or criteria.agreement is None:
            return
        if event.get("state") == "failed":
            self._put(spec, record, state="failed", reason=str(event.get("reason") or "shadow"))
            return
        frames, lower = event.get("frames"), event.get("agreement_lower")
        if event.get("state") != "report" or not isinstance(frames, int):
            return
        if frames < criteria.min_frames or record.figures.get("promoting"):
            return
        figures = {**record.figures, "agreement": lower, "frames": frames}
        running = rollout.state == "running"
        if running and isinstance(lower, (int, float)) and lower >= criteria.agreement:
            self._send(rollout, record, "shadow", {"action": "promote", "version": spec.version})
            self._put(spec, record, figures={**figures, "promoting": 1})
            return
        if rollout.state != "running":
            return  # paused: no promotion now, and no verdict either
        why = f"agreement lower bound {lower} < {criteria.agreement:g} over {frames} frames"
        self._send(rollout, record, "shadow", {"action": "stop", "version": spec.version})
        self._put(spec, record, state="failed", reason=why, figures=figures)

    def _reply(self, rollout: Rollout, record: DeviceRecord, reply: dict[str, Any]) -> None:
        sent = self._commands.get(str(reply.get("id")))
        if sent is None or sent[:2] != (rollout.spec.id, record.device):
            return
        state, cmd = reply.get("state"), sent[2]
        if state not in ("done", "failed", "rejected"):
            return
        del self._commands[str(reply["id"])]
        if cmd == "rollback" and state == "done" and record.state != "rolled_back":
            self._put(rollout.spec, record, state="rolled_back", reason=rollout.reason)
        elif state != "done" and record.state not in ("failed", "rolled_back"):
            why = f"{cmd} command {state}: {reply.get('reason') or 'no reason given'}"
            self._put(rollout.spec, record, reason=why[:REASON_MAX])

    def _catch_up(self, rollout: Rollout) -> None:
        """Deployment events are not retained: a device's retained status repeats its last step,
        so one that answered while no controller listened is still heard."""
        model = {"name": rollout.spec.name, "version": rollout.spec.version}
        for record in self._store.devices(rollout.spec.id).values():
            if record.state not in IN_FLIGHT and not _rolling(record):
                continue
            step = self._fleet.deployment(record.device)
            if step is None or step.get("model") != model:
                continue
            if record.figures.get("rollback") and step.get("state") != "rolled_back":
                continue
            self._deployment(rollout, record, step)

    def _deadlines(self, rollout: Rollout) -> None:
        now, spec = self._clock(), rollout.spec
        for record in self._store.devices(spec.id).values():
            if record.state in IN_FLIGHT and now - record.since > spec.answer_s:
                why = f"nothing final within {spec.answer_s:g} s of its {record.state} state"
                self._put(spec, record, state="no_answer", reason=why)
            sent_at = record.figures.get("rollback_at")
            if _rolling(record) and isinstance(sent_at, float) and now - sent_at > spec.answer_s:
                # Given up on, so that the rollout settles; the reason says what is left to do.
                why = f"no answer to the rollback within {spec.answer_s:g} s"
                self._put(spec, record, reason=why, figures={**record.figures, "rollback": 2})

    # --- waves -----------------------------------------------------------------------------------

    def _advance(self, rollout: Rollout) -> None:
        """Fill the current wave up to its size in devices that succeeded or may still; once
        every member is final and none is left to take, start the next wave (or finish)."""
        spec = rollout.spec
        known = self._fleet.members(spec.target)
        if not known:
            return  # nothing seen in the target yet: wait for devices to appear
        records = self._store.devices(spec.id)
        size = spec.waves[rollout.wave].size(len(known))
        hopeful = sum(r.state in ("sent", "staged", "succeeded") for r in records.values())
        sent = False
        for device in ordered(spec.id, known):
            if hopeful >= size:
                break
            if device in records:
                continue
            record = DeviceRecord(device=device, wave=rollout.wave, since=self._clock())
            if not self._fleet.online(device):
                self._store.put_device(spec.id, record.model_copy(update={"state": "offline"}))
                continue
            self._store.put_device(spec.id, self._push(spec, record))
            hopeful, sent = hopeful + 1, True
        members = [r for r in self._store.devices(spec.id).values() if r.wave == rollout.wave]
        if sent or any(r.state not in FINAL_DEVICE for r in members):
            return
        if rollout.wave + 1 < len(spec.waves):
            self._store.set_wave(spec.id, rollout.wave + 1)
            return
        # Not over a pause or an abort by hand that landed since this step read the state: the
        # next step reads that one.
        with contextlib.suppress(InputError):
            self._store.set_state(spec.id, "done", only_from=RUNNING)

    def _push(self, spec: RolloutSpec, record: DeviceRecord) -> DeviceRecord:
        serving = self._fleet.serving(record.device)
        if serving == {"name": spec.name, "version": spec.version}:
            # The agent says nothing when told to deploy what it already serves.
            return record.model_copy(update={"state": "succeeded", "reason": "already serving"})
        try:
            self._actions.push(spec, record.device)
        except Exception as exc:  # a failed push fails this device, not the job
            return record.model_copy(update={"state": "failed", "reason": f"push: {exc}"})
        return record.model_copy(update={"state": "sent"})

    # --- abort and rollback ----------------------------------------------------------------------

    def _abort(self, rollout: Rollout, verdict: Abort) -> None:
        with contextlib.suppress(InputError):  # not over an abort by hand (its reason stays)
            self._store.set_state(
                rollout.spec.id, "aborted", verdict.reason, dict(verdict.evidence),
                only_from=("running", "paused"),
            )  # fmt: skip
        aborted = self._store.get(rollout.spec.id)
        if aborted is not None and aborted.state == "aborted":
            self._clean_up(aborted)

    def _clean_up(self, rollout: Rollout) -> bool:
        """Clear the wave's retained manifests (once), roll back each device that went active on
        this version; True while a device of the wave may still answer."""
        spec = rollout.spec
        wave = [r for r in self._store.devices(spec.id).values() if r.wave == rollout.wave]
        if spec.id not in self._withdrawn:
            for record in wave:
                if record.state != "offline":
                    self._actions.withdraw(record.device)
            self._withdrawn.add(spec.id)
        pending = False
        for record in wave:
            # A device that rolled itself back (failed) is on its previous version already.
            went_active = record.state == "succeeded" or (
                record.state == "sent" and record.figures.get("active")
            )
            if record.state == "staged" and not record.figures.get("stopped"):
                self._send(rollout, record, "shadow", {"action": "stop", "version": spec.version})
                record = self._put(spec, record, figures={**record.figures, "stopped": 1})
            if (
                went_active
                and not record.figures.get("rollback")
                and record.reason != "already serving"
            ):
                self._roll_back(rollout, record)
                record = self._store.devices(spec.id)[record.device]
            pending = pending or record.state in IN_FLIGHT or _rolling(record)
        return pending

    def _roll_back(self, rollout: Rollout, record: DeviceRecord) -> None:
        args = {"reason": rollout.reason[:REASON_MAX], "quarantine": True}
        self._send(rollout, record, "rollback", args)
        figures = {**record.figures, "rollback": 1, "rollback_at": self._clock()}
        self._put(rollout.spec, record, figures=figures)

    def _send(self, rollout: Rollout, record: DeviceRecord, cmd: str, args: dict[str, Any]) -> None:
        try:
            command_id = self._actions.command(record.device, cmd, args)
        except Exception as exc:  # recorded on the device; the job goes on
            why = f"{cmd} command not sent: {exc}"
            self._put(rollout.spec, record, reason=why[:REASON_MAX])
            return
        self._commands[command_id] = (rollout.spec.id, record.device, cmd)


def _rolling(record: DeviceRecord) -> bool:
    """Sent a rollback by the abort, not yet rolled back nor given up on."""
    return record.figures.get("rollback") == 1 and record.state != "rolled_back"
