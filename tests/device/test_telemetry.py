"""Device telemetry: process sampling, the telemetry payload, the Prometheus endpoint."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
from agent.upstream.metrics import PrometheusExporter
from agent.upstream.telemetry import UPSTREAM, ProcessSampler
from telemetry_samples import STAGES, idle_message, sample_message, sample_process


def _zone(root: Path, name: str, content: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "temp").write_text(content)


def test_soc_temperature_is_the_hottest_zone(tmp_path: Path) -> None:
    _zone(tmp_path, "thermal_zone0", "41250\n")
    _zone(tmp_path, "thermal_zone1", "58900\n")
    _zone(tmp_path, "thermal_zone2", "garbage\n")  # an unreadable zone does not hide the others
    _zone(tmp_path, "cooling_device0", "99000\n")  # not a thermal zone
    assert ProcessSampler(thermal_root=tmp_path).sample(tmp_path)["soc_temp_celsius"] == 58.9


def test_soc_temperature_is_none_without_sensors(tmp_path: Path) -> None:
    sampler = ProcessSampler(thermal_root=tmp_path / "absent")
    assert sampler.sample(tmp_path)["soc_temp_celsius"] is None


def test_process_figures(tmp_path: Path) -> None:
    sampler = ProcessSampler(thermal_root=tmp_path)
    sample = sampler.sample(tmp_path)
    assert set(sample) == {"cpu_ratio", "rss_bytes", "disk_free_bytes", "soc_temp_celsius"}
    # Bytes, not MB: a Python process holds more than a MiB.
    assert sample["rss_bytes"] is not None and sample["rss_bytes"] > 1024 * 1024
    assert isinstance(sample["rss_bytes"], int) and isinstance(sample["disk_free_bytes"], int)
    assert sample["disk_free_bytes"] > 0


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def test_cpu_ratio_counts_work_since_the_previous_sample(tmp_path: Path) -> None:
    sampler = ProcessSampler(thermal_root=tmp_path)
    sampler.sample(tmp_path)
    start = _cpu_seconds()
    # Spin until the kernel has charged this process 0.1 s of CPU, whatever the machine's load.
    while _cpu_seconds() - start < 0.1:
        sum(range(1000))
    busy = sampler.sample(tmp_path)["cpu_ratio"]
    assert busy is not None and 0 < busy <= (os.cpu_count() or 1)  # 1.0 = one core


def test_telemetry_message() -> None:
    message = sample_message()
    assert message["frames_total"] == 225 and message["frames_per_second"] == 12.5
    assert (message["latency_p50_seconds"], message["latency_p99_seconds"]) == (0.0065, 0.01425)
    assert message["frame_latency_seconds"] == {
        stage: {key: ms / 1000 for key, ms in figures.items()} for stage, figures in STAGES.items()
    }
    assert message["soc_temp_celsius"] == 55.2 and message["cpu_ratio"] == 0.375
    assert message["model"] == {"name": "digits-cnn", "version": "1.0.0"}
    assert {"device", "boot_id", "at", "results_queued"} <= set(message)
    assert message["dropped_frames_total"] == 3 and message["results_dropped_total"] == 1
    json.dumps(message)  # it goes on the wire


def test_telemetry_message_before_any_frame() -> None:
    message = idle_message(process=sample_process(soc_temp_celsius=None))
    assert message["frames_per_second"] == 0.0 and message["frames_total"] == 0
    assert message["latency_p99_seconds"] is None and message["frame_latency_seconds"] == {}
    assert message["soc_temp_celsius"] is None and message["model"] is None


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_prometheus_endpoint() -> None:
    exporter = PrometheusExporter(0, device="cam-1", host="127.0.0.1")
    try:
        assert exporter.port > 0
        exporter.update(sample_message())
        body = _scrape(exporter.port)
        assert 'edgewise_frames_total{device="cam-1"} 225.0' in body
        assert 'edgewise_soc_temp_celsius{device="cam-1"} 55.2' in body
        assert 'edgewise_results_queued{device="cam-1"} 4.0' in body
        assert 'edgewise_rss_bytes{device="cam-1"} 8.4934656e+07' in body
        assert 'edgewise_model_info{device="cam-1",name="digits-cnn",version="1.0.0"} 1.0' in body
        assert "process_cpu_seconds_total " in body and "python_info{" in body

        # A figure that disappears is withdrawn, not left stale.
        exporter.update(sample_message(soc_temp_celsius=None, model=None))
        body = _scrape(exporter.port)
        assert 'edgewise_soc_temp_celsius{device="cam-1"}' not in body
        assert "edgewise_model_info{" not in body
        assert 'edgewise_frames_total{device="cam-1"} 225.0' in body
    finally:
        exporter.close()


def test_two_prometheus_exporters_in_one_process() -> None:
    first = PrometheusExporter(0, device="a", host="127.0.0.1")
    second = PrometheusExporter(0, device="b", host="127.0.0.1")
    try:
        second.update(sample_message(frames_total=3))
        assert 'edgewise_frames_total{device="b"} 3.0' in _scrape(second.port)
        assert "edgewise_frames_total{" not in _scrape(first.port)
    finally:
        first.close()
        second.close()


def test_prometheus_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(RuntimeError, match="pip install prometheus-client"):
        PrometheusExporter(0, device="cam-1")


UPSTREAM_FIGURES = {
    "outbox_errors_total": 3,
    "outbox_error": "OperationalError: database or disk is full",
    "results_in_memory": 120,
    "results_truncated_total": 7,
    "results_suppressed_total": 11,
    "messages_shortened_total": 1,
    "max_packet_bytes": 65536,
    "messages_rejected_total": 9,
}


def test_telemetry_carries_the_outbox_and_uplink_figures() -> None:
    message = idle_message(results_queued=130, results_dropped=2, upstream=UPSTREAM_FIGURES)
    assert {k: message[k] for k in UPSTREAM} == UPSTREAM_FIGURES
    json.dumps(message)


def test_prometheus_serves_the_upstream_figures_but_not_the_error_text() -> None:
    exporter = PrometheusExporter(0, device="cam-1", host="127.0.0.1")
    try:
        exporter.update(sample_message(**UPSTREAM_FIGURES))
        body = _scrape(exporter.port)
        assert 'edgewise_outbox_errors_total{device="cam-1"} 3.0' in body
        assert 'edgewise_results_in_memory{device="cam-1"} 120.0' in body
        assert 'edgewise_results_truncated_total{device="cam-1"} 7.0' in body
        assert 'edgewise_max_packet_bytes{device="cam-1"} 65536.0' in body
        assert 'edgewise_messages_rejected_total{device="cam-1"} 9.0' in body
        assert 'edgewise_results_suppressed_total{device="cam-1"} 11.0' in body
        assert "disk is full" not in body
    finally:
        exporter.close()


def test_the_sources_counters_reach_telemetry_and_metrics() -> None:
    """Whatever a source counts (garbage records, overflow, ...) is in the message and gets a
    counter named after it, however many kinds of counter the kind keeps."""
    message = idle_message(source={"garbage": 4, "overflow": 2})
    assert message["source"] == {"garbage": 4, "overflow": 2}
    exporter = PrometheusExporter(0, device="cam-1", host="127.0.0.1")
    try:
        exporter.update(message)
        body = _scrape(exporter.port)
        assert 'edgewise_source_garbage_total{device="cam-1"} 4.0' in body
        assert 'edgewise_source_overflow_total{device="cam-1"} 2.0' in body
        exporter.update({**message, "source": {"garbage": 9}})
        assert 'edgewise_source_garbage_total{device="cam-1"} 9.0' in _scrape(exporter.port)
    finally:
        exporter.close()
