"""The ``control`` thread: signed commands in, two replies out.

paho's thread only queues what arrives on ``commands/device/{id}``, the device's groups' and
``commands/all`` (a bounded queue; a flood is counted and refused, never run). This thread opens
each command — signature by a key trusted *for commands*, schema, target, time window
(:func:`agent.contract.commands.open_command`) — refuses a replayed id (:mod:`memory`), looks
the command up (:mod:`actions`), checks its arguments, replies ``accepted``, runs it, and replies
``done`` or ``failed``. Whatever is refused gets a ``rejected`` reply naming why and is never
run. Every step runs inside a :class:`agent.comms.guard.Boundary`: no command ends this thread.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.comms.guard import EXPECTED, Boundary, reason_for
from agent.comms.link import Request
from agent.contract import ContractError, SignatureError, TrustStore, describe_errors
from agent.contract.commands import MAX_COMMAND_BYTES, open_command
from agent.contract.envelope import unb64
from agent.contract.strictjson import parse_json
from agent.control.actions import ACTIONS, Action, Controls
from agent.control.memory import SeenCommands
from agent.control.replies import Replies

log = logging.getLogger(__name__)

QUEUE_DEPTH = 16  # commands waiting at once; more are refused (a flood is not a queue)
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True)
class Signed:
    topic: str
    envelope: bytes
    request: Request


@dataclass(frozen=True)
class Local:
    """A command from a local integration that cannot sign (Home Assistant), already checked
    against its own allow list."""

    id: str
    cmd: str
    args: dict[str, Any]


def claimed_id(envelope: bytes) -> str:
    """The id a command claims, for the reply to a command that cannot be opened (so the
    operator's tool can match it); a digest of the bytes when there is none."""
    try:
        body = parse_json(envelope[:MAX_COMMAND_BYTES])
        claimed = parse_json(unb64(body["payload"])).get("id")  # type: ignore[index,union-attr]
        if isinstance(claimed, str) and _ID.match(claimed):
            return claimed
    except Exception:  # anything at all: this is only a label for the rejection
        pass
    return f"unknown-{hashlib.sha256(envelope).hexdigest()[:12]}"


class Controller(threading.Thread):
    def __init__(
        self,
        *,
        controls: Controls,
        trust: TrustStore | None,
        scopes: list[str],
        seen: SeenCommands,
        report: Any,
        stop: threading.Event,
    ):
        """``trust``: the keys trusted for commands (None: every command is refused);
        ``scopes``: ``device:ID``, ``group:G``…, ``all``; ``report``: publishes an event."""
        super().__init__(name="control", daemon=True)
        self._controls, self._trust, self._seen = controls, trust, seen
        self._scopes = set(scopes)
        self._topics = [controls.topics.commands(t) for t in scopes]
        self._replies = Replies(controls.link, controls.topics, controls.device)
        self._report, self._halt = report, stop
        self._queue: queue.Queue[Signed | Local] = queue.Queue(QUEUE_DEPTH)
        self.boundary = Boundary("control", self._publish_rejection)
        self.done = 0

    def subscribe(self) -> None:
        for topic in self._topics:
            self._controls.link.subscribe_requests(topic, self._arrived)

    def submit_local(self, cmd: str, args: dict[str, Any], origin: str) -> None:
        """Queue an unsigned command from ``origin`` (its caller checked it is allowed)."""
        self._enqueue(Local(f"{origin}-{uuid.uuid4().hex[:12]}", cmd, args))

    def _arrived(self, topic: str, payload: bytes, request: Request) -> None:
        """On paho's thread: queue, nothing more (a full queue is a refusal)."""
        self._enqueue(Signed(topic, payload, request))

    def _enqueue(self, item: Signed | Local) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            why = f"{QUEUE_DEPTH} commands already wait; this one is refused, not run"
            if isinstance(item, Local):
                self._reject(item.id, why, None)
            else:
                self._reject(claimed_id(item.envelope), why, item.request.correlation_data)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self.boundary.call(self._handle, item)

    def _handle(self, item: Signed | Local) -> None:
        if isinstance(item, Local):
            command_id, cmd, args, correlation = item.id, item.cmd, item.args, None
        else:
            correlation = item.request.correlation_data
            opened = self._open(item)
            if opened is None:
                return
            command_id, cmd, args = opened
        action = ACTIONS.get(cmd)
        if action is None:
            known = ", ".join(sorted(ACTIONS))
            self._reject(command_id, f"unknown command {cmd!r} (known: {known})", correlation)
            return
        try:
            parsed = action.args.model_validate(args)
        except ValidationError as exc:
            why = f"command {cmd}: bad args: {describe_errors(exc)}"
            self._reject(command_id, why, correlation)
            return
        self._replies.send(command_id, "accepted", correlation=correlation)
        self._run(command_id, cmd, action, parsed, correlation)

    def _open(self, item: Signed) -> tuple[str, str, dict[str, Any]] | None:
        """(id, cmd, args) of a command that may run; None once it was rejected."""
        now = time.time()
        correlation = item.request.correlation_data
        try:
            if self._trust is None:
                raise SignatureError("no key is trusted for commands ([commands] public_keys)")
            command = open_command(item.envelope, self._trust, self._scopes, now)
        except ContractError as exc:
            self._reject(claimed_id(item.envelope), str(exc), correlation)
            return None
        if not self._seen.remember(command.id, command.expires_at, now):
            why = f"command {command.id} was already received (a replay); not run again"
            self._reject(command.id, why, correlation)
            return None
        return command.id, command.cmd, dict(command.args)

    def _run(
        self, command_id: str, cmd: str, action: Action, args: Any, correlation: bytes | None
    ) -> None:
        try:
            result = action.run(self._controls, command_id, args)
        except Exception as exc:  # a failed command is reported, the thread carries on
            if not isinstance(exc, EXPECTED):
                log.error(
                    "command %s (%s) crashed: %s: %s", command_id, cmd, type(exc).__name__, exc
                )
            self._replies.send(
                command_id, "failed", reason=reason_for(exc), correlation=correlation
            )
            return
        self.done += 1
        self._replies.send(command_id, "done", result=result, correlation=correlation)
        log.info("command %s (%s) done", command_id, cmd)
        if action.then_exit:
            self._controls.restart()

    def _reject(self, command_id: str, reason: str, correlation: bytes | None) -> None:
        self._replies.send(command_id, "rejected", reason=reason, correlation=correlation)
        self.boundary.reject(reason, id=command_id)

    def _publish_rejection(self, reason: str, detail: dict[str, Any]) -> None:
        """The boundary's sink: a rejection as an event too (rate-limited), for the fleet."""
        self._report({"type": "command", "state": "rejected", "reason": reason, **detail})
