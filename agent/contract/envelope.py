"""The signed envelope a manifest travels in, read and written; signatures are checked in
:mod:`agent.contract.signing`.

Version 2, written by every push, is a DSSE envelope (the in-toto / Sigstore Dead Simple Signing
Envelope)::

    {"payloadType": "application/vnd.edgewise.manifest+json",
     "payload": "<base64 of the manifest JSON bytes>",
     "signatures": [{"keyid": "<16 hex digits>", "sig": "<base64 Ed25519 signature>"}]}

Each signature covers ``PAE(payloadType, payload)`` =
``b"DSSEv1 " + len(type) + b" " + type + b" " + len(body) + b" " + body`` (lengths in ASCII
decimal, ``body`` the raw payload bytes): the exact bytes signed travel in the envelope, so a
verifier never re-serialises JSON (nor needs to format floats as Python does).

Version 1, still verified so that packages installed before keep booting::

    {"manifest": {...}, "signatures": [{"key_id": "...", "alg": "ed25519", "sig": "<base64>"}]}

signed over :func:`canonical_json` of ``manifest``. The two are domain-separated: PAE bytes begin
with ``DSSEv1``, canonical JSON with ``{``, so no signature is good for both.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from agent.contract.errors import ManifestError, PayloadError
from agent.contract.strictjson import parse_json

PAYLOAD_TYPE = "application/vnd.edgewise.manifest+json"
COMMAND_TYPE = "application/vnd.edgewise.command+json"  # a signed device command (same DSSE)
MAX_SIGNATURES = 8  # a few keys during a rotation; more is noise to make the device work
_DSSE_FIELDS = ("payloadType", "payload", "signatures")
_NOT_ENVELOPE = "not a signed manifest envelope"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what each signature of a v2 envelope covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Standard or URL-safe base64 (DSSE allows either), padded; ValueError for anything else."""
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc


def dsse_envelope(
    payload: bytes, signatures: list[tuple[str, bytes]], payload_type: str = PAYLOAD_TYPE
) -> bytes:
    """A v2 envelope of ``payload`` with (key id, signature over PAE) pairs, as UTF-8 JSON."""
    return canonical_json(
        {
            "payloadType": payload_type,
            "payload": b64(payload),
            "signatures": [{"keyid": kid, "sig": b64(sig)} for kid, sig in signatures],
        }
    )


@dataclass(frozen=True)
class Opened:
    """An envelope taken apart, nothing verified yet."""

    format: int  # 1: the old {"manifest", "signatures"}; 2: DSSE
    signed: bytes  # the bytes each signature covers
    signatures: list[tuple[str, str, str]]  # (key id, alg, base64 signature)
    body: Any  # v1: the manifest object; v2: the payload bytes, parsed only once verified

    def manifest_body(self) -> dict[str, Any]:
        """The manifest object (for v2, the payload parsed strictly)."""
        if self.format == 1:
            return dict(self.body)
        try:
            data = parse_json(self.body)
        except PayloadError as exc:
            raise ManifestError(f"signed payload is not a manifest: {exc}") from exc
        if not isinstance(data, dict):
            raise ManifestError("signed payload is not a manifest: not a JSON object")
        return data


def open_envelope(envelope: bytes, payload_type: str = PAYLOAD_TYPE) -> Opened:
    """Parse an envelope strictly and check its shape and types; ManifestError (one line, never
    quoting the envelope) when it is not one. Only manifests have a version 1."""
    try:
        data = parse_json(envelope)
    except PayloadError as exc:
        raise ManifestError(f"{_NOT_ENVELOPE}: {exc}") from exc
    if isinstance(data, dict) and "manifest" in data and payload_type == PAYLOAD_TYPE:
        return _open_v1(data)
    if not isinstance(data, dict) or not any(k in data for k in _DSSE_FIELDS):
        raise ManifestError(
            f"{_NOT_ENVELOPE}: expected a DSSE object with payloadType, payload and signatures"
        )
    return _open_dsse(data, payload_type)


def _open_dsse(data: dict[str, Any], payload_type: str) -> Opened:
    missing = [k for k in _DSSE_FIELDS if k not in data]
    if missing:
        raise ManifestError(f"{_NOT_ENVELOPE}: DSSE envelope without {', '.join(missing)}")
    if len(data) != len(_DSSE_FIELDS):
        raise ManifestError(f"{_NOT_ENVELOPE}: DSSE envelope with fields besides {_DSSE_FIELDS}")
    kind, payload = data["payloadType"], data["payload"]
    if not isinstance(kind, str) or not isinstance(payload, str):
        raise ManifestError(f"{_NOT_ENVELOPE}: payloadType and payload must be strings")
    if kind != payload_type:
        raise ManifestError(f"{_NOT_ENVELOPE}: payloadType is not {payload_type}")
    try:
        body = unb64(payload)
    except ValueError:
        raise ManifestError(f"{_NOT_ENVELOPE}: payload is not base64") from None
    entries = _signature_list(data["signatures"])
    signatures = [(kid, "ed25519", sig) for kid, sig in (_dsse_fields(e) for e in entries)]
    return Opened(2, pae(kind, body), signatures, body)


def _open_v1(data: dict[str, Any]) -> Opened:
    if set(data) != {"manifest", "signatures"}:
        raise ManifestError(f"{_NOT_ENVELOPE}: expected an object with manifest and signatures")
    body = data["manifest"]
    if not isinstance(body, dict) or not isinstance(data["signatures"], list):
        raise ManifestError(f"{_NOT_ENVELOPE}: manifest must be an object and signatures a list")
    signatures = [_v1_fields(entry) for entry in _signature_list(data["signatures"])]
    return Opened(1, canonical_json(body), signatures, body)


def _signature_list(signatures: object) -> list[Any]:
    if not isinstance(signatures, list):
        raise ManifestError(f"{_NOT_ENVELOPE}: signatures must be a list")
    if len(signatures) > MAX_SIGNATURES:
        raise ManifestError(f"{_NOT_ENVELOPE}: over {MAX_SIGNATURES} signatures")
    return signatures


def _dsse_fields(entry: object) -> tuple[str, str]:
    fields = entry if isinstance(entry, dict) else {}
    kid, sig = fields.get("keyid"), fields.get("sig")
    if isinstance(kid, str) and isinstance(sig, str):
        return kid, sig
    raise ManifestError(f"{_NOT_ENVELOPE}: each signature needs keyid and sig as strings")


def _v1_fields(entry: object) -> tuple[str, str, str]:
    """key_id, alg and sig of one signature: strings, or the envelope is malformed."""
    fields = entry if isinstance(entry, dict) else {}
    kid, alg, sig = (fields.get(k) for k in ("key_id", "alg", "sig"))
    if isinstance(kid, str) and isinstance(alg, str) and isinstance(sig, str):
        return kid, alg, sig
    raise ManifestError(f"{_NOT_ENVELOPE}: each signature needs key_id, alg and sig as strings")
