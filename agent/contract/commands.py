"""Signed device commands: the envelope an operator sends on ``commands/device/{id}`` (or a
group's, or the fleet's) and the replies a device publishes on its own ``replies`` topic.

A command is a DSSE envelope (:mod:`agent.contract.envelope`) of payload type
``application/vnd.edgewise.command+json``, signed by a key the device trusts *for commands* — the
broker's ACL is not the only guard. Its payload::

    {"id": "<uuid>", "cmd": "ping", "args": {...}, "target": "device:cam-1",
     "issued_at": 1795894879.0, "expires_at": 1795894939.0}

:func:`open_command` checks, in order, the envelope, the signature, the schema, the target and
the time window, and names the first problem; whether ``cmd`` is one the device knows and its
``args`` fit are the device's to check. Ids seen are the device's to remember (a replay is
refused by id for as long as the command could still be valid).
"""

from __future__ import annotations

from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.contract.envelope import (
    COMMAND_TYPE,
    canonical_json,
    dsse_envelope,
    open_envelope,
    pae,
    unb64,
)
from agent.contract.errors import ContractError, ManifestError, PayloadError
from agent.contract.manifest import Target, describe_errors
from agent.contract.signing import TrustStore, key_id
from agent.contract.strictjson import parse_json

MAX_COMMAND_BYTES = 16 * 1024  # a command names what to do; data travels by other means
MAX_LIFETIME_S = 24 * 3600  # longer-lived commands would make the replay memory unbounded
CLOCK_SKEW_S = 60.0  # a device clock this far behind the operator's still takes a fresh command


class CommandError(ContractError):
    """A command that must not run: malformed, unsigned, untrusted, for another device,
    expired or not yet valid. The message is one line and never quotes the command."""


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    cmd: str = Field(pattern=r"^[a-z][a-z_]{0,31}$")
    args: dict[str, Any] = Field(default_factory=dict, max_length=32)
    target: Target
    issued_at: float = Field(ge=0)
    expires_at: float = Field(ge=0)

    def payload(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))


def sign_command(command: Command, private_key: Ed25519PrivateKey) -> bytes:
    """The wire envelope of a command, signed by one key."""
    payload = command.payload()
    signature = private_key.sign(pae(COMMAND_TYPE, payload))
    return dsse_envelope(payload, [(key_id(private_key.public_key()), signature)], COMMAND_TYPE)


def open_command(envelope: bytes, trust: TrustStore, scopes: set[str], now: float) -> Command:
    """The command in ``envelope`` if it may run here now; CommandError naming why not.
    ``scopes``: the targets this device answers to (``device:ID``, its ``group:G``, ``all``)."""
    if len(envelope) > MAX_COMMAND_BYTES:
        raise CommandError(f"a command of {len(envelope)} bytes (at most {MAX_COMMAND_BYTES})")
    try:
        opened = open_envelope(envelope, COMMAND_TYPE)
    except ManifestError as exc:
        raise CommandError(str(exc).replace("manifest", "command")) from exc
    body = _verified(opened.signatures, opened.signed, opened.body, trust)
    try:
        command = Command.model_validate(parse_json(body))
    except (PayloadError, ValidationError) as exc:
        why = describe_errors(exc) if isinstance(exc, ValidationError) else str(exc)
        raise CommandError(f"invalid command: {why}") from exc
    if command.target not in scopes:
        raise CommandError(f"command {command.id} is for {command.target}, not this device")
    return _in_window(command, now)


def _verified(
    signatures: list[tuple[str, str, str]], signed: bytes, body: bytes, trust: TrustStore
) -> bytes:
    for kid, _alg, sig in signatures:
        key = trust.key(kid)
        if key is None:
            continue
        try:
            key.verify(unb64(sig), signed)
        except (InvalidSignature, ValueError) as exc:
            raise CommandError(f"command signature by trusted key {kid} does not verify") from exc
        return body
    raise CommandError(f"command not signed by a key trusted for commands ({trust.key_ids})")


def _in_window(command: Command, now: float) -> Command:
    if command.expires_at <= command.issued_at:
        raise CommandError(f"command {command.id} expires before it is issued")
    if command.expires_at - command.issued_at > MAX_LIFETIME_S:
        raise CommandError(f"command {command.id} is valid for over {MAX_LIFETIME_S} s")
    if now >= command.expires_at:
        raise CommandError(f"command {command.id} expired {now - command.expires_at:.0f} s ago")
    if command.issued_at > now + CLOCK_SKEW_S:
        raise CommandError(f"command {command.id} is issued in the future (check the clocks)")
    return command


ReplyState = Literal["accepted", "rejected", "done", "failed"]


class Reply(BaseModel):
    """What a device says of a command on ``devices/{id}/replies``: accepted or rejected (with
    the reason), then done or failed (with the result)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(max_length=64)
    state: ReplyState
    reason: str | None = Field(default=None, max_length=256)
    result: dict[str, Any] | None = None
    at: float
