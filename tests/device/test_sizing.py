"""Fitting results and events under the packet cap (agent.comms.sizing), without a broker."""

from __future__ import annotations

import json

from agent.comms.sizing import (
    PUBLISH_OVERHEAD,
    fit_result,
    fit_result_bytes,
    payload_budget,
    shorten,
)


def _result(predictions: int, source: str = "/dev/video0") -> dict[str, object]:
    return {
        "id": "cam-1:boot:7", "device": "cam-1", "seq": 7, "source": source, "frame": 9,
        "captured_at": 1.5, "published_at": 1.6, "model": {"name": "m", "version": "1.0.0"},
        "label": "class-000", "score": 0.9,
        "predictions": [{"label": f"class-{i:03d}", "score": round(0.9 - i / 1000, 5)}
                        for i in range(predictions)],
        "latency_ms": {"total": 3.0},
    }  # fmt: skip


def _size(obj: object) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


def test_the_budget_leaves_room_for_the_topic_and_framing() -> None:
    assert payload_budget("edgewise/v1/devices/cam-1/results", 4096) == (
        4096 - len("edgewise/v1/devices/cam-1/results") - PUBLISH_OVERHEAD
    )


def test_a_result_that_fits_is_untouched() -> None:
    result = _result(10)
    encoded, cut = fit_result(result, 10_000)
    assert not cut and json.loads(encoded) == result


def test_a_big_result_keeps_as_many_of_its_best_predictions_as_fit() -> None:
    result = _result(160)
    encoded, cut = fit_result(result, 2000)
    assert cut and len(encoded) <= 2000
    fitted = json.loads(encoded)
    kept = fitted["predictions"]
    assert fitted["truncated"] is True and fitted["predictions_total"] == 160
    assert kept == result["predictions"][: len(kept)]  # type: ignore[index]
    one_more = {**fitted, "predictions": result["predictions"][: len(kept) + 1]}  # type: ignore[index]
    assert _size(one_more) > 2000, "not one more would have fitted"
    added = ("predictions", "truncated", "predictions_total")
    rest = {k: v for k, v in fitted.items() if k not in added}
    assert rest == {k: v for k, v in result.items() if k != "predictions"}


def test_a_result_that_cannot_fit_even_bare_keeps_who_and_when() -> None:
    encoded, cut = fit_result(_result(3, source="x" * 5000), 600)
    fitted = json.loads(encoded)
    assert cut and len(encoded) <= 600 and fitted["truncated"] is True
    assert fitted["id"] == "cam-1:boot:7" and fitted["seq"] == 7 and fitted["label"] == "class-000"


def test_a_stored_result_is_fitted_from_its_bytes() -> None:
    payload = json.dumps(_result(160)).encode()
    encoded, cut = fit_result_bytes(payload, 1500)
    assert cut and len(encoded) <= 1500 and json.loads(encoded)["truncated"] is True
    assert fit_result_bytes(b'{"id": 1}', 1500) == (b'{"id": 1}', False)
    junk, cut = fit_result_bytes(b"\xff" * 5000, 1500)
    assert cut and json.loads(junk) == {"truncated": True, "bytes": 5000,
                                        "sha256": json.loads(junk)["sha256"]}  # fmt: skip


def test_an_event_echoing_a_megabyte_is_shortened_to_its_facts() -> None:
    event = {"type": "deployment", "state": "rejected", "version": "1.0.0",
             "reason": "bad manifest: " + "A" * 1_000_000}  # fmt: skip
    payload = json.dumps(event).encode()
    short = shorten(payload, 2048)
    fitted = json.loads(short)
    assert len(short) <= 2048
    assert fitted["type"] == "deployment" and fitted["state"] == "rejected"
    assert fitted["truncated"] is True and fitted["bytes"] == len(payload)
    assert len(fitted["sha256"]) == 16
    assert fitted["reason"].startswith("bad manifest: AAA") and len(fitted["reason"]) < 300


def test_shortening_drops_nested_values_when_cutting_strings_is_not_enough() -> None:
    status = {"state": "online", "deployment": {f"k{i}": "v" * 250 for i in range(200)}}
    fitted = json.loads(shorten(json.dumps(status).encode(), 1024))
    assert fitted["state"] == "online" and "deployment" not in fitted and fitted["truncated"]


def test_a_message_that_is_not_json_is_summarised() -> None:
    fitted = json.loads(shorten(b"\x00" * 9000, 512))
    assert fitted["bytes"] == 9000 and fitted["truncated"] is True
    assert shorten(b"small", 512) == b"small"
