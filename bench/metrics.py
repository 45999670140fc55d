"""Metrics benchmark: what the agent's Prometheus conventions cost, beside prometheus-client's
own types doing the same job in the same run.

- Per frame: `StageStats.record` (the rolling window telemetry's p50/p99 come from, plus the
  cumulative histogram `/metrics` serves) against prometheus-client's `Histogram.observe` for
  the same six stages (what an exporter built on the library's own types would pay).
- Per scrape: the agent's `PrometheusExporter` (families built at scrape time from the last
  telemetry message, the histograms and the default `process_*`/`python_*` collectors) against
  a registry of the library's own Gauge/Counter/Histogram objects with the same families, both
  served by prometheus-client's HTTP server and fetched over loopback.
- Both texts checked against Prometheus' naming rules (`tests/metrics_rules.py`).

    .venv/bin/python bench/metrics.py

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import random
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import prometheus_client
from metrics_rules import problems

from agent.inference.stats import BUCKETS_S, STAGES, StageStats
from agent.upstream.metrics import LiveFigures, PrometheusExporter
from agent.upstream.telemetry import FIGURES

FRAMES = 200_000
SCRAPES = 300
ROUNDS = 5  # interleaved, best of: the machine is shared


def frame_latencies(n: int) -> list[dict[str, float]]:
    """Per-stage latencies in ms, spread over several buckets as a real frame path's are."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        stages = {s: rng.lognormvariate(-1.0, 1.2) for s in STAGES if s != "total"}
        stages["total"] = sum(stages.values())
        out.append(stages)
    return out


def per_frame_ns(samples: list[dict[str, float]]) -> tuple[float, float]:
    """Best-of-rounds ns per frame: StageStats.record vs prometheus-client's Histogram."""
    ours_best = peer_best = float("inf")
    for _ in range(ROUNDS):
        stats = StageStats()
        start = time.perf_counter_ns()
        for stages in samples:
            stats.record(**stages)
        ours_best = min(ours_best, (time.perf_counter_ns() - start) / len(samples))

        registry = prometheus_client.CollectorRegistry()
        hist = prometheus_client.Histogram(
            "edgewise_frame_latency_seconds", "Time per stage", ["stage"],
            buckets=BUCKETS_S, registry=registry,
        )  # fmt: skip
        children = {s: hist.labels(stage=s) for s in STAGES}  # resolved once, as an exporter would
        start = time.perf_counter_ns()
        for stages in samples:
            for stage, ms in stages.items():
                children[stage].observe(ms / 1000.0)
        peer_best = min(peer_best, (time.perf_counter_ns() - start) / len(samples))
    return ours_best, peer_best


def message() -> dict[str, object]:
    """A telemetry message carrying every figure, a model and deployment counts."""
    figures: dict[str, object] = {key: float(i + 1) for i, key in enumerate(FIGURES)}
    figures["model"] = {"name": "digits-cnn", "version": "1.0.0"}
    figures["deployments_total"] = {"active": 2, "passed": 1, "rolled_back": 0}
    figures["source"] = {"frames_read": 1000, "reopened": 1}
    return figures


def peer_registry(stats: StageStats) -> prometheus_client.CollectorRegistry:
    """The same families as prometheus-client objects, set once (the library's own way)."""
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    for key, (kind, help_) in FIGURES.items():
        name = f"edgewise_{key}"
        if kind == "counter":
            counter = prometheus_client.Counter(name, help_, ["device"], registry=registry)
            counter.labels(device="cam-1").inc(1.0)
        else:
            gauge = prometheus_client.Gauge(name, help_, ["device"], registry=registry)
            gauge.labels(device="cam-1").set(1.0)
    hist = prometheus_client.Histogram(
        "edgewise_frame_latency_seconds", "Time per stage", ["device", "stage"],
        buckets=BUCKETS_S, registry=registry,
    )  # fmt: skip
    for stage, h in stats.histograms().items():
        hist.labels(device="cam-1", stage=stage).observe(h.sum_s / max(h.count, 1))
    return registry


def fetch(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read()


def per_scrape_ms(ours_port: int, peer_port: int) -> tuple[float, float]:
    ours_best = peer_best = float("inf")
    for _ in range(ROUNDS):
        for port, which in ((ours_port, "ours"), (peer_port, "peer")):
            start = time.perf_counter()
            for _ in range(SCRAPES // ROUNDS):
                fetch(port)
            ms = (time.perf_counter() - start) * 1000 / (SCRAPES // ROUNDS)
            if which == "ours":
                ours_best = min(ours_best, ms)
            else:
                peer_best = min(peer_best, ms)
    return ours_best, peer_best


def main() -> int:
    samples = frame_latencies(FRAMES)
    ours_ns, peer_ns = per_frame_ns(samples)

    stats = StageStats()
    for stages in samples[:10_000]:
        stats.record(**stages)
    exporter = PrometheusExporter(
        0, "cam-1", host="127.0.0.1", live=LiveFigures(stats.histograms, lambda: True)
    )
    exporter.update(message())
    peer = peer_registry(stats)
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=peer)
    try:
        ours_text, peer_text = fetch(exporter.port), fetch(server.server_port)
        ours_ms, peer_ms = per_scrape_ms(exporter.port, server.server_port)
    finally:
        exporter.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    ours_problems = problems(ours_text.decode())
    for line in ours_problems:
        print("naming:", line)

    rows = [
        ("record one frame (6 stages), ns", ours_ns, peer_ns),
        ("one /metrics scrape over loopback, ms", ours_ms, peer_ms),
        ("/metrics size, bytes", len(ours_text), len(peer_text)),
    ]
    print(f"{'figure':42} {'agent':>12} {'prometheus-client':>18} {'ratio':>7}")
    for name, ours, theirs in rows:
        print(f"{name:42} {ours:12.2f} {theirs:18.2f} {ours / theirs:7.2f}")
    print(f"naming problems: agent {len(ours_problems)}, peer {len(problems(peer_text.decode()))}")
    figures = {
        "record_ns_per_frame": round(ours_ns, 1),
        "peer_record_ns_per_frame": round(peer_ns, 1),
        "record_vs_peer": round(ours_ns / peer_ns, 3),
        "scrape_ms": round(ours_ms, 3),
        "peer_scrape_ms": round(peer_ms, 3),
        "scrape_vs_peer": round(ours_ms / peer_ms, 3),
        "naming_problems": len(ours_problems),
    }
    print(json.dumps(figures))
    return 1 if ours_problems else 0


if __name__ == "__main__":
    sys.exit(main())
