"""Signed device commands (agent.contract.commands): what may run, and one named reason for
each thing that may not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent.contract import Topics, TrustStore, generate_keypair, load_private_key, load_public_key
from agent.contract.commands import Command, CommandError, Reply, open_command, sign_command
from agent.contract.envelope import b64, dsse_envelope, pae

NOW = 1_795_894_879.0
SCOPES = {"device:cam-1", "group:lobby", "all"}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    generate_keypair(tmp_path / "op.key", tmp_path / "op.pub")
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    return tmp_path / "op.key", tmp_path / "op.pub", tmp_path / "other.key"


def command(**fields: object) -> Command:
    values: dict[str, object] = {
        "id": "0f1e2d3c4b5a", "cmd": "ping", "args": {}, "target": "device:cam-1",
        "issued_at": NOW - 1, "expires_at": NOW + 60,
    }  # fmt: skip
    values.update(fields)
    return Command.model_validate(values)


def trust(keys: tuple[Path, Path, Path]) -> TrustStore:
    return TrustStore([load_public_key(keys[1])])


@pytest.mark.parametrize("target", ["device:cam-1", "group:lobby", "all"])
def test_a_signed_fresh_command_for_this_device_opens(keys, target: str) -> None:  # type: ignore[no-untyped-def]
    sent = command(target=target, args={"min_score": 0.5})
    envelope = sign_command(sent, load_private_key(keys[0]))
    assert open_command(envelope, trust(keys), SCOPES, NOW) == sent


def _forged_payload(keys: tuple[Path, Path, Path]) -> bytes:
    """A good signature over one command, carried with another command's payload."""
    good = json.loads(sign_command(command(), load_private_key(keys[0])))
    good["payload"] = b64(command(cmd="restart").payload())
    return json.dumps(good).encode()


def _manifest_typed(keys: tuple[Path, Path, Path]) -> bytes:
    """A command signed as if it were a manifest: domain-separated by payloadType."""
    payload = command().payload()
    key = load_private_key(keys[0])
    from agent.contract import key_id
    from agent.contract.envelope import PAYLOAD_TYPE

    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return dsse_envelope(payload, [(key_id(key.public_key()), sig)], PAYLOAD_TYPE)


BAD = {
    "signed by an untrusted key": (
        lambda k: sign_command(command(), load_private_key(k[2])),
        "not signed by a key trusted",
    ),
    "payload swapped under a signature": (_forged_payload, "does not verify"),
    "a manifest's payload type": (_manifest_typed, "payloadType is not"),
    "expired": (
        lambda k: sign_command(
            command(issued_at=NOW - 120, expires_at=NOW - 60), load_private_key(k[0])
        ),
        "expired 60 s ago",
    ),
    "issued in the future": (
        lambda k: sign_command(
            command(issued_at=NOW + 600, expires_at=NOW + 900), load_private_key(k[0])
        ),
        "in the future",
    ),
    "for another device": (
        lambda k: sign_command(command(target="device:cam-2"), load_private_key(k[0])),
        "is for device:cam-2, not this device",
    ),
    "garbage bytes": (lambda _k: b"\x00\xff garbage", "not a signed command envelope"),
    "not UTF-8": (lambda _k: b'{"payload": "\xff"}', "not a signed command envelope"),
    "oversized": (lambda _k: b"{" + b" " * 20_000 + b"}", "at most 16384"),
    "missing fields": (
        lambda k: _signed_body(k, {"id": "0f1e2d3c4b5a", "cmd": "ping"}),
        "invalid command",
    ),
    "valid for days": (
        lambda k: sign_command(command(expires_at=NOW + 3 * 86_400), load_private_key(k[0])),
        "valid for over",
    ),
}


def _signed_body(keys: tuple[Path, Path, Path], body: dict[str, object]) -> bytes:
    from agent.contract import canonical_json, key_id
    from agent.contract.envelope import COMMAND_TYPE

    payload = canonical_json(body)
    key = load_private_key(keys[0])
    sig = key.sign(pae(COMMAND_TYPE, payload))
    return dsse_envelope(payload, [(key_id(key.public_key()), sig)], COMMAND_TYPE)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_command_that_must_not_run_is_refused_with_its_reason(keys, case: str) -> None:  # type: ignore[no-untyped-def]
    make, reason = BAD[case]
    with pytest.raises(CommandError) as refused:
        open_command(make(keys), trust(keys), SCOPES, NOW)
    message = str(refused.value)
    assert reason in message and "\n" not in message and len(message) <= 256, message


def test_replies_and_their_topic() -> None:
    reply = Reply(id="0f1e2d3c4b5a", state="rejected", reason="expired", at=NOW)
    assert reply.model_dump(exclude_none=True)["state"] == "rejected"
    assert Topics().replies("cam-1") == "edgewise/v1/devices/cam-1/replies"
    with pytest.raises(ValueError):
        Reply(id="x", state="maybe", at=NOW)  # type: ignore[arg-type]
