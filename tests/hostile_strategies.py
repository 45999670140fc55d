"""Hypothesis strategies for hostile payloads: arbitrary bytes and JSON, envelopes built from
parts, and mutations of a valid signed envelope (a field replaced by anything, re-signed or not;
truncation; byte edits)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from hostile_signed import sign_loose
from hostile_wire import WRONG, dump, paths, set_at
from hypothesis import strategies as st

from agent.contract import PAYLOAD_TYPE

SAMPLE_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["\ud800", "\x00", "..", "con", "current", "1.0.0", "99999999999999999999999.0.0"]
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value, NaN, ±Infinity, huge integers and lone surrogates included."""
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | SAMPLE_TEXT
        | st.sampled_from([value for _, value in WRONG])
        | st.sampled_from([10**400, -(10**400), 2**1024])  # beyond any float
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SAMPLE_TEXT, inner, max_size=4),
        max_leaves=max_leaves,
    )


def envelopes(kid: str) -> st.SearchStrategy[bytes]:
    """Things shaped like an envelope (DSSE or v1): a payload or manifest of anything,
    signatures half-right."""
    b64 = st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
    dsse_signature = st.fixed_dictionaries(
        {},
        optional={
            "keyid": st.sampled_from([kid, kid.upper(), ""]) | json_values(2),
            "sig": b64 | json_values(2),
        },
    )
    payload = st.builds(dump, json_values(), st.booleans()) | st.binary(max_size=120)
    dsse = st.fixed_dictionaries(
        {},
        optional={
            "payloadType": st.sampled_from([PAYLOAD_TYPE, "application/json", ""]) | json_values(2),
            "payload": payload.map(lambda b: base64.b64encode(b).decode()) | json_values(2),
            "signatures": st.lists(dsse_signature, max_size=3) | json_values(3),
        },
    )
    signature = st.fixed_dictionaries(
        {},
        optional={
            "key_id": st.sampled_from([kid, kid.upper(), ""]) | json_values(2),
            "alg": st.just("ed25519") | json_values(2),
            "sig": b64 | json_values(2),
        },
    )
    v1 = st.fixed_dictionaries(
        {"manifest": json_values(), "signatures": st.lists(signature, max_size=3) | json_values(3)}
    )
    return st.builds(dump, dsse | v1, st.booleans())


def mutations(valid: bytes, key: Path) -> st.SearchStrategy[bytes]:
    """The served envelope with one field of its manifest replaced, the payload re-signed or only
    re-encoded; or one field of the envelope itself replaced."""
    doc = json.loads(valid)
    body = json.loads(base64.b64decode(doc["payload"]))

    def mutate_body(path: tuple[Any, ...], value: Any, resign: bool) -> bytes:
        changed = set_at(body, path, value)
        if resign:
            return sign_loose(changed, key)
        return dump({**doc, "payload": base64.b64encode(dump(changed)).decode()})

    def mutate_envelope(path: tuple[Any, ...], value: Any) -> bytes:
        return dump(set_at(doc, path, value))

    return st.builds(
        mutate_body, st.sampled_from(paths(body)), json_values(6), st.booleans()
    ) | st.builds(mutate_envelope, st.sampled_from(paths(doc)), json_values(6))


def byte_edits(valid: bytes) -> st.SearchStrategy[bytes]:
    """Truncated, or a few bytes overwritten or inserted."""
    truncated = st.integers(0, len(valid)).map(lambda n: valid[:n])

    def edit(edits: list[tuple[int, int, bool]]) -> bytes:
        out = bytearray(valid)
        for at, byte, insert in edits:
            at %= len(out) or 1
            if insert:
                out.insert(at, byte)
            else:
                out[at] = byte
        return bytes(out)

    edits = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255), st.booleans()),
                     min_size=1, max_size=6)  # fmt: skip
    return truncated | edits.map(edit)


def deploy_payloads(valid: bytes, kid: str, key: Path) -> st.SearchStrategy[bytes]:
    """What the deployer's handler is fed."""
    return st.one_of(
        st.binary(max_size=512),
        st.builds(dump, json_values(), st.booleans()),
        envelopes(kid),
        mutations(valid, key),
        byte_edits(valid),
    )


def hostile_chunk(real: bytes) -> st.SearchStrategy[bytes]:
    """Bytes for a chunk topic instead of ``real``: close to it, or nothing like it."""
    return st.one_of(
        st.binary(min_size=1, max_size=3 * len(real)),
        st.integers(0, len(real) - 1).map(
            lambda i: real[:i] + bytes([real[i] ^ 64]) + real[i + 1 :]
        ),
        st.binary(min_size=1, max_size=8).map(lambda extra: real + extra),
        st.integers(1, len(real) - 1).map(lambda n: real[:n]),
        st.just(real * 2),
    )


def sensor_messages() -> st.SearchStrategy[bytes]:
    """A sensor topic's messages: numbers, near-numbers, JSON of anything, raw bytes."""
    numbers = st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(), max_size=5)
    return st.one_of(
        st.binary(max_size=256),
        st.builds(dump, json_values(), st.booleans()),
        numbers.map(lambda v: ",".join(str(x) for x in v).encode()),
        numbers.map(lambda v: dump(v)),
        st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
