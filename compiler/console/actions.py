"""What an operator does from the console: send a signed command to one device, and pause,
resume or abort a rollout (the same rules as ``edgewise rollout``: ``compiler.rollout.changes``).

Both block (a PUBACK, a database write): the web handlers run them in a worker thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.contract import DEVICE_ID_PATTERN, ContractError, Topics, load_private_key

from ..errors import CompilerError, InputError
from ..fleet.command import new_command, signed
from ..fleet.mqtt import capabilities
from ..rollout.changes import CHANGES, Changed, apply_change
from ..rollout.report import as_json
from ..rollout.store import UnknownRollout, is_postgres, open_store

ROLLOUT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DEVICE = re.compile(DEVICE_ID_PATTERN)


class CommandRefused(InputError):
    """A command the console does not send, or arguments it does not take (HTTP 400)."""


class CommandUnavailable(CompilerError):
    """No command key, or the broker is not there to take the command (HTTP 503)."""


@dataclass(frozen=True)
class _Arg:
    kind: type | tuple[type, ...]
    choices: tuple[Any, ...] = ()
    low: int | None = None
    high: int | None = None


# The commands the console sends and the arguments each takes; the device checks them again.
COMMANDS: dict[str, dict[str, _Arg]] = {
    "ping": {},
    "status": {},
    "restart": {},
    "snapshot": {"quality": _Arg(int, low=1, high=100)},
    "rollback": {"reason": _Arg(str, high=200)},
    "shadow": {"action": _Arg(str, choices=("promote", "stop", "status"))},
}


def check_command(cmd: object, args: object) -> tuple[str, dict[str, Any]]:
    """``cmd`` and ``args`` if the console sends them; CommandRefused naming what is wrong."""
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise CommandRefused(f"cmd {cmd!r}: the console sends {', '.join(COMMANDS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CommandRefused("args is a JSON object")
    allowed = COMMANDS[cmd]
    for key, value in args.items():
        arg = allowed.get(key)
        if arg is None:
            takes = ", ".join(allowed) or "no arguments"
            raise CommandRefused(f"{cmd} does not take {key!r} (it takes {takes})")
        _check_arg(cmd, key, value, arg)
    if cmd == "shadow" and "action" not in args:
        raise CommandRefused("shadow needs args.action: promote, stop or status")
    return cmd, dict(args)


def _check_arg(cmd: str, key: str, value: Any, arg: _Arg) -> None:
    if isinstance(value, bool) or not isinstance(value, arg.kind):
        raise CommandRefused(f"{cmd} {key}: {value!r} is not a {getattr(arg.kind, '__name__', '')}")
    if arg.choices and value not in arg.choices:
        raise CommandRefused(f"{cmd} {key}: one of {', '.join(map(str, arg.choices))}")
    size = len(value) if isinstance(value, str) else cast(int, value)
    if (arg.low is not None and size < arg.low) or (arg.high is not None and size > arg.high):
        raise CommandRefused(f"{cmd} {key}: {value!r} is out of range")


class CommandSender:
    """Signs commands with the operator's command key and publishes them to one device."""

    def __init__(self, client: mqtt.Client, topics: Topics, key: Path, timeout: float = 10.0):
        try:
            load_private_key(key)  # a wrong key fails serve at start, not at the first click
        except (OSError, ValueError, ContractError) as exc:
            raise InputError(f"--command-key {key}: not a PEM Ed25519 private key ({exc})") from exc
        self._client, self._topics, self._key, self._timeout = client, topics, key, timeout

    def send(self, device: str, cmd: str, args: dict[str, Any], ttl: float = 60.0) -> str:
        """Sign and publish at QoS 1; the command's id. CommandRefused (400) for what the
        console does not send, CommandUnavailable (503) when the broker does not take it."""
        if not _DEVICE.match(device):
            raise CommandRefused(f"{device!r} is not a device id")
        cmd, args = check_command(cmd, args)
        command = new_command(cmd, args, f"device:{device}", ttl)
        try:
            envelope = signed(command, self._key)
        except InputError as exc:
            raise CommandUnavailable(str(exc)) from exc
        if not self._client.is_connected():
            raise CommandUnavailable("the console is not connected to the broker; try again")
        properties = None
        if capabilities(self._client).protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = command.id.encode()
            properties.ResponseTopic = self._topics.replies(device)
        topic = self._topics.commands_device(device)
        try:
            info = self._client.publish(topic, envelope, qos=1, properties=properties)
            info.wait_for_publish(self._timeout)
            sent = info.is_published()
        except (RuntimeError, ValueError) as exc:  # paho: connection lost, queue full
            raise CommandUnavailable(f"lost the broker while sending the command: {exc}") from exc
        if not sent:
            raise CommandUnavailable(
                f"the broker did not acknowledge the command in {self._timeout:g} s"
            )
        return command.id


# --- rollouts -----------------------------------------------------------------------------------


def _check_rollout_id(rollout_id: str) -> None:
    if not ROLLOUT_ID.match(rollout_id):
        raise UnknownRollout(rollout_id)


def _missing(db: str) -> bool:
    """A SQLite file that is not there: reading must not create an empty database."""
    return not is_postgres(db) and not Path(db).exists()


def list_rollouts(db: str) -> list[dict[str, Any]]:
    """Every rollout as ``edgewise rollout status --json`` shows it, the newest first."""
    if _missing(db):
        return []
    with open_store(db) as store:
        return [as_json(r, store.devices(r.spec.id)) for r in store.list()]


def get_rollout(db: str, rollout_id: str) -> dict[str, Any]:
    _check_rollout_id(rollout_id)
    if _missing(db):
        raise UnknownRollout(rollout_id)
    with open_store(db) as store:
        rollout = store.get(rollout_id)
        if rollout is None:
            raise UnknownRollout(rollout_id)
        return as_json(rollout, store.devices(rollout_id))


def change_rollout(db: str, rollout_id: str, change: str, reason: str, user: str) -> Changed:
    """Pause, resume or abort; UnknownRollout, or InputError when its state does not allow it."""
    _check_rollout_id(rollout_id)
    if change not in CHANGES:
        raise InputError(f"{change!r} is not a change (one of {', '.join(CHANGES)})")
    if _missing(db):
        raise UnknownRollout(rollout_id)
    with open_store(db) as store:
        return apply_change(store, rollout_id, change, reason, by=f"console user {user}")
