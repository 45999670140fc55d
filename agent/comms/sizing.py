"""Keeping what the agent publishes under the broker's packet cap.

A broker disconnects a client that sends a packet over its ``max_packet_size``, and paho sends
a QoS 1 message again after every reconnect — so one oversize message stalls the link for good.
Nothing leaves the agent oversize: a result is cut (its predictions first) and flagged
``"truncated": true``; an event or status is shortened, then summarised.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# PUBLISH framing besides topic and payload: fixed header (1), remaining length (≤ 4), topic
# length (2), packet id (2), MQTT 5 property length (1); rounded up.
PUBLISH_OVERHEAD = 16
# Events, status and telemetry are small by nature; one over this is a bug or an echo of
# something hostile, and it is shortened rather than sent.
SMALL_MESSAGE_BYTES = 2048
LONG_TEXT = 256  # characters kept of a string in a shortened message
LONG_LIST = 16  # items kept of a list in a shortened message


def payload_budget(topic: str, max_packet: int) -> int:
    """The largest payload that, published on ``topic``, stays within ``max_packet`` bytes."""
    return max_packet - len(topic.encode()) - PUBLISH_OVERHEAD


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def fit_result(result: dict[str, Any], limit: int) -> tuple[bytes, bool]:
    """``result`` as JSON of at most ``limit`` bytes, and whether it had to be cut: the fewest
    predictions dropped (they come best first), then everything but who, when and the top label."""
    encoded = _dumps(result)
    if len(encoded) <= limit:
        return encoded, False
    found = result.get("predictions")
    predictions: list[Any] = found if isinstance(found, list) else []
    total = len(predictions)
    cut = {**result, "truncated": True, "predictions_total": total}
    low, high = 0, total  # binary search: the most predictions that fit
    best: bytes | None = None
    while low <= high:
        keep = (low + high) // 2
        encoded = _dumps({**cut, "predictions": predictions[:keep]})
        if len(encoded) <= limit:
            best, low = encoded, keep + 1
        else:
            high = keep - 1
    if best is not None:
        return best, True
    return _skeleton(result, limit), True


def _skeleton(result: dict[str, Any], limit: int) -> bytes:
    keys = ("id", "device", "seq", "frame", "captured_at", "published_at", "label", "score")
    bare = {k: _short(result[k]) for k in keys if k in result}
    encoded = _dumps({**bare, "truncated": True})
    if len(encoded) <= limit:
        return encoded
    return _dumps({"id": str(result.get("id"))[:LONG_TEXT], "truncated": True})


def fit_result_bytes(payload: bytes, limit: int) -> tuple[bytes, bool]:
    """:func:`fit_result` for a result already encoded (one stored in the outbox)."""
    if len(payload) <= limit:
        return payload, False
    try:
        result = json.loads(payload)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        return shorten(payload, limit), True
    return fit_result(result, limit)


def _short(value: Any) -> Any:
    """Long strings and lists cut, recursively."""
    if isinstance(value, str) and len(value) > LONG_TEXT:
        return f"{value[:LONG_TEXT]}… ({len(value)} characters)"
    if isinstance(value, list):
        return [_short(v) for v in value[:LONG_LIST]]
    if isinstance(value, dict):
        return {str(k)[:LONG_TEXT]: _short(v) for k, v in list(value.items())[: LONG_LIST * 4]}
    return value


def shorten(payload: bytes, limit: int) -> bytes:
    """``payload`` if it fits in ``limit`` bytes; else a JSON object with long strings and lists
    cut; else its scalar fields only; else just its size and hash. Every shortened message says
    ``"truncated": true`` with the original size and a sha256 prefix."""
    if len(payload) <= limit:
        return payload
    facts = {
        "truncated": True,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest()[:16],
    }
    try:
        message = json.loads(payload)
    except ValueError:
        message = None
    if isinstance(message, dict):
        candidates = [
            {**_short(message), **facts},
            {
                **{k: v for k, v in _short(message).items() if not isinstance(v, dict | list)},
                **facts,
            },
        ]
        for candidate in candidates:
            encoded = _dumps(candidate)
            if len(encoded) <= limit:
                return encoded
    return _dumps(facts)
