"""A telemetry message as an agent sends it, for tests of whatever reads one."""

from __future__ import annotations

from agent.upstream.telemetry import telemetry_message

STAGES = {
    "inference": {"p50": 4.0, "p99": 9.0, "mean": 5.0},
    "total": {"p50": 6.5, "p99": 14.25, "mean": 7.0},
}


def sample_process(**overrides: float | None) -> dict[str, float | None]:
    figures: dict[str, float | None] = {
        "cpu_ratio": 0.375,
        "rss_bytes": 81 * 1024 * 1024,
        "disk_free_bytes": 2048 * 1024 * 1024,
        "soc_temp_celsius": 55.2,
    }
    figures.update(overrides)
    return figures


def sample_message(**overrides: object) -> dict[str, object]:
    message = telemetry_message(
        device="cam-1",
        boot_id="boot-1",
        interval_s=10.0,
        frames=225,
        frames_before=100,
        stages=STAGES,
        dropped_frames=3,
        results_queued=4,
        results_dropped=1,
        process=sample_process(),
        model={"name": "digits-cnn", "version": "1.0.0"},
    )
    message.update(overrides)
    return message


def idle_message(**arguments: object) -> dict[str, object]:
    """``telemetry_message`` for an interval without a frame, with nothing queued and no model;
    ``arguments`` replace its arguments."""
    defaults: dict[str, object] = {
        "device": "cam-1",
        "boot_id": "b",
        "interval_s": 10.0,
        "frames": 0,
        "frames_before": 0,
        "stages": {},
        "dropped_frames": 0,
        "results_queued": 0,
        "results_dropped": 0,
        "process": sample_process(),
        "model": None,
    }
    return telemetry_message(**{**defaults, **arguments})
