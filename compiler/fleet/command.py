"""``edgewise command``: one signed command to a device, a group or the fleet, and its replies.

It subscribes before it publishes (a device answers within milliseconds, and a snapshot's
chunks may come before or after its ``done`` reply), then sends the DSSE envelope at QoS 1, not
retained: a command is for the devices listening now, not for one that connects tomorrow. Over
MQTT 5 it carries Correlation Data (the command id) and, to one device, the Response Topic.

Replies are gathered for this command's id only. A device target ends at its final reply
(done, failed or rejected); a group or the fleet, whose members nobody can list, at the timeout
or once ``expect`` devices finished. A snapshot is put together from its chunks, checked against
its reply (size, sha256) and decoded before it is written as ``{out}/{device}-{id}.jpg``; a lost
or altered chunk makes that device ``failed`` with the reason.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from agent.contract import ContractError, Topics, load_private_key, parse_json
from agent.contract.commands import MAX_COMMAND_BYTES, Command, Reply, sign_command
from agent.contract.manifest import describe_errors
from agent.contract.snapshot import Snapshot, assemble

from ..errors import BrokerUnavailable, InputError
from .mqtt import Subscriber, capabilities

log = logging.getLogger(__name__)

FINAL = ("done", "failed", "rejected")
SNAPSHOT = "snapshot"


def new_command(cmd: str, args: dict[str, Any], target: str, ttl: float) -> Command:
    """A fresh command valid for ``ttl`` seconds from now; InputError naming what does not fit."""
    now = time.time()
    try:
        return Command(
            id=uuid.uuid4().hex, cmd=cmd, args=args, target=target,
            issued_at=now, expires_at=now + ttl,
        )  # fmt: skip
    except ValidationError as exc:
        raise InputError(f"not a command this CLI can send: {describe_errors(exc)}") from exc


def signed(command: Command, key: Path) -> bytes:
    """The command's envelope signed with the operator's command key; InputError if the key
    is not a PEM Ed25519 private key or the command is over the size a device takes."""
    try:
        private = load_private_key(key)
    except (OSError, ValueError, ContractError) as exc:
        raise InputError(f"--key {key}: not a PEM Ed25519 private key ({exc})") from exc
    envelope = sign_command(command, private)
    if len(envelope) > MAX_COMMAND_BYTES:
        raise InputError(
            f"the signed command is {len(envelope)} bytes; devices take at most "
            f"{MAX_COMMAND_BYTES}: send less in ARGS"
        )
    return envelope


@dataclass(frozen=True)
class Answer:
    """One reply of one device, as printed; ``file`` is where its snapshot was written."""

    device: str
    reply: Reply
    file: Path | None = None

    def line(self) -> str:
        reply, words = self.reply, [self.device, self.reply.state]
        if reply.state in ("rejected", "failed"):
            words.append(reply.reason or "(no reason given)")
        elif reply.state == "done" and self.file is not None:
            shot = Snapshot.model_validate((reply.result or {})[SNAPSHOT])
            words.append(f"saved {self.file} ({shot.width}x{shot.height}, {shot.bytes} bytes)")
        elif reply.state == "done" and reply.result:
            words.append(json.dumps(reply.result, separators=(",", ":")))
        return "  ".join(words)

    def json_line(self) -> str:
        data: dict[str, Any] = {"device": self.device, **self.reply.model_dump(mode="json")}
        if self.file is not None:
            data["file"] = str(self.file)
        return json.dumps(data, separators=(",", ":"))


class CommandSession:
    """The replies (and snapshot chunks) of one command, from before it is sent until the end."""

    def __init__(self, client: mqtt.Client, topics: Topics, command: Command, out: Path):
        kind, _, ident = command.target.partition(":")
        self.device = ident if kind == "device" else None
        self.command, self._client, self._topics, self._out = command, client, topics, out
        self._replies = topics.replies(ident) if self.device else topics.all_devices("replies")
        self._chunk_filter = topics.snapshot_chunks(command.id)
        self._cond = threading.Condition()
        self._ready: deque[Answer] = deque()  # answers not yet handed out
        self._states: dict[str, list[str]] = {}  # every state each device said, in order
        self._shots: dict[str, tuple[Reply, Snapshot]] = {}  # done, awaiting their chunks
        self._chunks: dict[str, dict[int, bytes]] = {}
        client.message_callback_add(self._replies, self._on_reply)
        if command.cmd == SNAPSHOT:
            client.message_callback_add(self._chunk_filter, self._on_chunk)

    def subscribe(self, subscriber: Subscriber) -> None:
        filters = [(self._replies, 1)]
        if self.command.cmd == SNAPSHOT:
            filters.append((self._chunk_filter, 1))
        subscriber.subscribe(filters)

    def send(self, envelope: bytes, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; BrokerUnavailable if none."""
        properties = None
        if capabilities(self._client).protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = self.command.id.encode()
            if self.device is not None:
                properties.ResponseTopic = self._replies
        topic = self._topics.commands(self.command.target)
        info = self._client.publish(topic, envelope, qos=1, retain=False, properties=properties)
        try:
            info.wait_for_publish(timeout)
            sent = info.is_published()
        except (RuntimeError, ValueError) as exc:  # paho: connection lost, queue full
            raise BrokerUnavailable(f"lost the broker while sending the command: {exc}") from exc
        if not sent:
            raise BrokerUnavailable(f"the broker did not acknowledge the command in {timeout:g} s")

    @property
    def answered(self) -> set[str]:
        with self._cond:
            return set(self._states)

    def final(self, device: str) -> str | None:
        """The device's final state once it is settled (a snapshot: once written or failed)."""
        with self._cond:
            return self._final(device)

    def answers(self, timeout: float, expect: int | None = None) -> Iterator[Answer]:
        """Each answer as it comes, until the target finished or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._ready or self._settled(expect) or self._due(),
                    max(0.0, deadline - time.monotonic()),
                )
                ready = list(self._ready)
                self._ready.clear()
                due = [d for d in self._shots if self._has_all_chunks(d)]
                over = time.monotonic() >= deadline
                if over:
                    due = list(self._shots)
                shots = {d: (self._shots.pop(d), dict(self._chunks.get(d, {}))) for d in due}
            yield from ready
            for device, ((reply, shot), chunks) in shots.items():
                yield self._finish_snapshot(device, reply, shot, chunks)
            with self._cond:
                if not self._ready and (over or self._settled(expect)):
                    return

    def _final(self, device: str) -> str | None:
        if device in self._shots:
            return None
        said = [s for s in self._states.get(device, []) if s in FINAL]
        return said[-1] if said else None

    def _settled(self, expect: int | None) -> bool:
        if self.device is not None:
            return self._final(self.device) is not None
        if expect is not None:
            return sum(self._final(d) is not None for d in self._states) >= expect
        return False  # a group or the fleet: anyone may still answer until the timeout

    def _due(self) -> bool:
        return any(self._has_all_chunks(d) for d in self._shots)

    def _has_all_chunks(self, device: str) -> bool:
        _, shot = self._shots[device]
        got = self._chunks.get(device, {})
        return all(i in got for i in range(shot.chunks))

    def _on_reply(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            device = self._topics.device_of(msg.topic)
            data = parse_json(msg.payload)
            if not isinstance(data, dict):
                raise ContractError("a reply that is not a JSON object")
            data.pop("device", None)  # the topic says which device; its ACL makes that true
            reply = Reply.model_validate(data)
        except (ValueError, ContractError) as exc:  # ValidationError is a ValueError
            log.debug("ignored a reply on %s: %s", msg.topic, exc)
            return
        if reply.id != self.command.id:
            return
        with self._cond:
            self._take(device, reply)
            self._cond.notify_all()

    def _take(self, device: str, reply: Reply) -> None:
        said = self._states.setdefault(device, [])
        if reply.state in said or any(s in FINAL for s in said):
            return  # a QoS 1 duplicate, or a word after the last one
        said.append(reply.state)
        if reply.state == "done" and self.command.cmd == SNAPSHOT:
            try:
                shot = Snapshot.model_validate((reply.result or {}).get(SNAPSHOT))
            except ValidationError as exc:
                why = f"the reply describes no valid snapshot: {describe_errors(exc)}"
                said.append("failed")
                self._ready.append(Answer(device, _failed(reply, why)))
                return
            self._shots[device] = (reply, shot)
            return
        self._ready.append(Answer(device, reply))

    def _on_chunk(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            device = self._topics.device_of(msg.topic)
            index = int(msg.topic.rsplit("/", 1)[1])
        except ValueError:
            return
        with self._cond:
            self._chunks.setdefault(device, {})[index] = bytes(msg.payload)
            self._cond.notify_all()

    def _finish_snapshot(
        self, device: str, reply: Reply, shot: Snapshot, chunks: dict[int, bytes]
    ) -> Answer:
        """Assemble, check, decode and write one device's snapshot; its answer either way."""
        path = self._out / f"{device}-{self.command.id}.jpg"
        try:
            jpeg = assemble(shot, chunks)
            _check_decodes(jpeg, shot)
            path.write_bytes(jpeg)
            answer = Answer(device, reply, path)
        except ContractError as exc:
            answer = Answer(device, _failed(reply, str(exc)))
        except OSError as exc:
            answer = Answer(device, _failed(reply, f"cannot write {path}: {exc.strerror}"))
        with self._cond:
            if answer.reply.state == "failed":
                self._states[device].append("failed")
        return answer


def _check_decodes(jpeg: bytes, shot: Snapshot) -> None:
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ContractError("the snapshot does not decode as an image")
    height, width = image.shape[:2]
    if (width, height) != (shot.width, shot.height):
        raise ContractError(
            f"the snapshot decodes to {width}x{height}, its reply says {shot.width}x{shot.height}"
        )


def _failed(reply: Reply, reason: str) -> Reply:
    return Reply(id=reply.id, state="failed", reason=reason[:256], result=None, at=time.time())
