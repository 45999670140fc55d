"""Issue 12, in process: strict JSON, schema bounds, short reasons, signature field types and the
boundary every topic handler runs inside."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from forge import sign_raw, sign_v1

from agent.comms.guard import Boundary, RateLimit
from agent.config import DeployConfig
from agent.contract import (
    ContractError,
    Manifest,
    ManifestError,
    PayloadError,
    SignatureError,
    TrustStore,
    canonical_json,
    clip,
    describe_blob,
    generate_keypair,
    load_private_key,
    parse_json,
    sign_manifest,
    summarise,
)
from agent.delivery.admission import check_admission
from agent.delivery.outcomes import Rejected
from agent.errors import DeployError
from agent.sources.sensors import parse_sample
from compiler.recipe.digits import LABELS, PREPROCESS

# --- strict JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e999}', "out of float range"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b"[" * 1000 + b"]" * 1000, "nested deeper"),
        (b"[" * 33 + b"]" * 33, "nested deeper"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"\xed\xa0\x80", "not UTF-8"),  # a surrogate encoded as UTF-8 bytes
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"1" * 5000, "not JSON"),  # past Python's int digit limit
    ],
)
def test_strict_json_refuses(payload: bytes, why: str) -> None:
    with pytest.raises(PayloadError, match=why) as info:
        parse_json(payload)
    assert len(str(info.value)) < 200


def test_strict_json_accepts_plain_json() -> None:
    text = '{"a": [1, 2.5, -3e10, "é", true, null, {"b": []}], "c": "\\u00e9"}'
    assert parse_json(text.encode()) == json.loads(text)
    assert parse_json(b"[" * 32 + b"]" * 32) is not None


def test_sensor_samples_go_through_the_strict_parser() -> None:
    assert parse_sample('{"x": 1, "y": 2}', "json") == [1.0, 2.0]
    for bad in ("[NaN]", "[" * 2000 + "]" * 2000, '{"x": 1, "x": 2}', '["\\ud800"]'):
        assert parse_sample(bad, "json") is None


# --- reasons ---------------------------------------------------------------------------------


def test_reasons_are_short_plain_and_never_the_payload() -> None:
    payload = ("Zq\n\u2028\ud800" * 500_000).encode("utf-8", "surrogatepass")
    reason = clip(f"bad: {payload!r}")
    assert len(reason) <= 256 and reason.isascii() and "\n" not in reason
    summary = summarise(payload)
    assert summary.startswith(f"{len(payload)} bytes, sha256 ") and len(summary) < 60


# --- schema bounds --------------------------------------------------------------------------


@pytest.fixture
def body(tmp_path: Path) -> dict[str, Any]:
    model = tmp_path / "model.onnx"
    model.write_bytes(bytes(range(256)) * 1000)
    manifest = Manifest(
        name="digits-cnn", version="1.2.3", created_at="2026-11-28T00:00:00+00:00",
        model=describe_blob(model, 64 * 1024), input={"name": "input", "shape": [None, 1, 28, 28]},
        preprocess=PREPROCESS, postprocess={"labels": LABELS},
    )  # fmt: skip
    return manifest.to_dict()


def _model(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**body, "model": {**body["model"], **changes}}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": "99999999999999999999999.0.0"}, "version"),
        ({"version": f"1.{2**31}.0"}, "version"),
        ({"min_agent_version": f"{2**31}.0.0"}, "min_agent_version"),
        ({"golden_atol": 0}, "golden_atol"),
        ({"golden_atol": -1}, "golden_atol"),
        ({"golden_atol": 1e6}, "golden_atol"),
        ({"max_latency_ms": 0}, "max_latency_ms"),
        ({"name": "current"}, "name"),
        ({"name": "previous"}, "name"),
        ({"name": "incoming"}, "name"),
        ({"name": "quarantine"}, "name"),
        ({"name": "con"}, "name"),
        ({"name": "lpt1"}, "name"),
        ({"name": "nul.x"}, "name"),
        ({"created_at": "x" * 100}, "created_at"),
    ],
)
def test_schema_bounds(body: dict[str, Any], change: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError, match=field):
        Manifest.from_dict({**body, **change})


@pytest.mark.parametrize(
    "path", ["con", "CON.onnx", "current", "previous.onnx", "envelope.json", "model.part", "aux"]
)
def test_reserved_file_names(body: dict[str, Any], path: str) -> None:
    with pytest.raises(ManifestError, match="path"):
        Manifest.from_dict(_model(body, path=path))


def test_numbers_are_bounded(body: dict[str, Any]) -> None:
    for change in ({"chunk_size": 2**40}, {"size": 2**50}):
        with pytest.raises(ManifestError, match="model"):
            Manifest.from_dict(_model(body, **change))
    wide = {**body["preprocess"], "width": 10**9}
    with pytest.raises(ManifestError, match="width"):
        Manifest.from_dict({**body, "preprocess": wide})
    for label in ("x" * 129,):
        with pytest.raises(ManifestError, match="labels"):
            Manifest.from_dict({**body, "postprocess": {"labels": [label]}})
    with pytest.raises(ManifestError, match="shape"):
        Manifest.from_dict({**body, "input": {"name": "input", "shape": [None, 0, 28, 28]}})


def test_golden_and_model_cannot_share_a_name(body: dict[str, Any]) -> None:
    with pytest.raises(ManifestError, match="share a name"):
        Manifest.from_dict({**body, "golden": body["model"]})


def test_schema_errors_never_quote_the_value(body: dict[str, Any]) -> None:
    filler = "Zq" * 100_000
    for bad in ({"name": filler}, {"postprocess": {"labels": [filler] * 50}}):
        with pytest.raises(ManifestError) as info:
            Manifest.from_dict({**body, **bad})
        assert "Zq" not in str(info.value) and len(str(info.value)) < 600
    with pytest.raises(ManifestError) as info:  # an unknown field is named if it looks like one
        Manifest.from_dict({**body, filler: 1})
    assert "Zq" not in str(info.value) and "?: Extra inputs are not permitted" in str(info.value)
    with pytest.raises(ManifestError, match="surprise: Extra inputs"):
        Manifest.from_dict({**body, "surprise": 1})


def test_chunk_counts_and_sizes_are_checked_against_the_device(body: dict[str, Any]) -> None:
    manifest = Manifest.from_dict(body)  # 256,000 bytes in 4 chunks of 64 KiB
    check_admission(manifest, DeployConfig(max_model_bytes=256_000), None)
    with pytest.raises(DeployError, match="max_model_bytes"):
        check_admission(manifest, DeployConfig(max_model_bytes=255_999), None)


def test_an_older_version_is_a_replay_whatever_the_quarantine_holds(body: dict[str, Any]) -> None:
    serving = Manifest.from_dict(body)
    older = Manifest.from_dict({**body, "version": "1.2.2"})
    with pytest.raises(Rejected, match="replay"):
        check_admission(older, DeployConfig(), serving)
    check_admission(older.model_copy(update={"rollback": True}), DeployConfig(), serving)


# --- signatures: types before use ---------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    return tmp_path / "a.key", tmp_path / "a.pub"


def _with_signature(envelope: bytes, **changes: Any) -> bytes:
    data = json.loads(envelope)
    data["signatures"][0].update(changes)
    return canonical_json(data)


@pytest.mark.parametrize(
    "changes",
    [{"sig": None}, {"sig": 5}, {"sig": ["a"]}, {"keyid": None}, {"keyid": {"x": 1}}],
)
def test_signature_fields_must_be_strings(body, keys, changes: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    envelope = sign_manifest(Manifest.from_dict(body), load_private_key(keys[0]))
    with pytest.raises(ManifestError, match="as strings"):
        TrustStore.from_files([keys[1]]).verify(_with_signature(envelope, **changes))


@pytest.mark.parametrize(
    "changes",
    [{"sig": None}, {"sig": 5}, {"sig": ["a"]}, {"key_id": None}, {"alg": {"x": 1}}],
)
def test_v1_signature_fields_must_be_strings(body, keys, changes: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    envelope = sign_v1(Manifest.from_dict(body), keys[0])
    with pytest.raises(ManifestError, match="as strings"):
        TrustStore.from_files([keys[1]]).verify(_with_signature(envelope, **changes))


def test_malformed_base64_and_odd_envelopes_are_contract_errors(body, keys) -> None:  # type: ignore[no-untyped-def]
    trust = TrustStore.from_files([keys[1]])
    envelope = sign_manifest(Manifest.from_dict(body), load_private_key(keys[0]))
    with pytest.raises(SignatureError, match="does not verify"):
        trust.verify(_with_signature(envelope, sig="***"))
    short = base64.b64encode(b"x").decode()
    with pytest.raises(SignatureError, match="does not verify"):
        trust.verify(_with_signature(envelope, sig=short))
    for payload in (b"[]", b'"x"', b"5", b"null", b'{"manifest": {}, "signatures": {}}',
                    b'{"manifest": {}, "signatures": [], "extra": 1}',
                    b'{"manifest": {}, "signatures": [1, 2, 3, 4, 5, 6, 7, 8, 9]}'):  # fmt: skip
        with pytest.raises(ManifestError, match="envelope"):
            trust.verify(payload)


def test_an_untrusted_key_id_is_not_echoed(body, keys) -> None:  # type: ignore[no-untyped-def]
    envelope = sign_manifest(Manifest.from_dict(body), load_private_key(keys[0]))
    forged = _with_signature(envelope, keyid="Zq" * 500_000)
    with pytest.raises(SignatureError) as info:
        TrustStore.from_files([keys[1]]).verify(forged)
    assert "ZqZq" not in str(info.value) and len(str(info.value)) < 200


def test_a_signed_body_the_schema_refuses_is_a_manifest_error(body, keys) -> None:  # type: ignore[no-untyped-def]
    envelope = sign_raw({**body, "version": "99999999999999999999999.0.0"}, keys[0])
    with pytest.raises(ManifestError, match="version"):
        TrustStore.from_files([keys[1]]).verify(envelope)


# --- the boundary -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_is_a_token_bucket() -> None:
    clock = Clock()
    limit = RateLimit(burst=3, every_s=2.0, clock=clock)
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    clock.now = 1.9
    assert not limit.allow()
    clock.now = 2.0
    assert limit.allow() and not limit.allow()


def test_boundary_turns_any_exception_into_a_counted_rejection() -> None:
    reported: list[tuple[str, dict[str, Any]]] = []
    boundary = Boundary("test", lambda reason, detail: reported.append((reason, detail)))

    def handler(kind: str) -> None:
        if kind == "contract":
            raise ContractError("bad " + "Zq" * 10_000)
        if kind == "bug":
            raise TypeError("a payload string " + "Zq" * 10_000)
        if kind == "recursion":
            raise RecursionError("deep")

    assert boundary.call(handler, "fine")
    for kind in ("contract", "bug", "recursion"):
        assert not boundary.call(handler, kind)
    assert boundary.rejected == 3
    reasons = [reason for reason, _ in reported]
    assert reasons[0].startswith("bad Zq") and len(reasons[0]) <= 256
    assert reasons[1] == "internal error (TypeError); the agent's log has the details"
    assert reasons[2].startswith("internal error (RecursionError)")


def test_boundary_holds_back_a_flood_and_says_how_many() -> None:
    reported: list[dict[str, Any]] = []
    clock = Clock()
    boundary = Boundary(
        "test", lambda _reason, detail: reported.append(detail), burst=5, clock=clock
    )
    for i in range(1000):
        boundary.reject(f"bad {i}")
    assert boundary.rejected == 1000 and len(reported) == 5
    clock.now = 1.0
    boundary.reject("one more")
    assert boundary.rejected == 1001 and reported[-1] == {"suppressed": 995}


def test_a_failing_sink_does_not_escape_the_boundary() -> None:
    def sink(_reason: str, _detail: dict[str, Any]) -> None:
        raise OSError("broker gone")

    boundary = Boundary("test", sink)
    guarded = boundary.wrap(lambda _topic, _payload: (_ for _ in ()).throw(ValueError("x")))
    guarded("t", b"payload")  # raises nothing
    assert boundary.rejected == 1
