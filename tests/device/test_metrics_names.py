"""``/metrics`` follows Prometheus' naming rules (``metrics_rules``, and ``promtool check
metrics`` where promtool is on the PATH): base units, ``_total`` on every counter and nowhere
else, HELP and TYPE for every family, a latency histogram per stage, build and model info, the
broker connection, deployments by outcome and the default collectors' ``process_*``."""

from __future__ import annotations

import urllib.request

from agent.contract import Topics
from agent.delivery.outcomes import OUTCOMES, DeploymentOutcomes
from agent.inference.pipeline import ModelSlot
from agent.inference.stats import BUCKETS_S, StageStats
from agent.notify import SystemdNotifier
from agent.upstream.metrics import LiveFigures, PrometheusExporter, agent_version
from agent.upstream.status import StatusBoard
from agent.upstream.telemetry import FIGURES, gate_figures
from metrics_rules import Family, find, parse, problems, promtool_problems
from telemetry_samples import sample_message

UPSTREAM = {
    "outbox_errors_total": 1, "outbox_error": "disk full", "results_in_memory": 2,
    "results_truncated_total": 3, "results_suppressed_total": 4,
    "messages_shortened_total": 5, "max_packet_bytes": 65536, "messages_rejected_total": 6,
}  # fmt: skip
GATE = {
    "gate_passed": 3, "gate_closed": 7, "gate_vad_chunks": 40, "gate_vad_ms": 5.0, "gate_errors": 0
}  # fmt: skip


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _everything() -> str:
    """A scrape with every kind of figure the agent serves present."""
    stages, outcomes, connected = StageStats(), DeploymentOutcomes(), [True]
    for ms in (0.2, 3.0, 3.0, 40.0, 20_000.0):  # below the first bound and above the last
        stages.record(queue=ms / 10, inference=ms, total=ms * 1.5)
    outcomes.count({"type": "deployment", "state": "active"})
    outcomes.count({"type": "deployment", "state": "passed"})
    outcomes.count({"type": "deployment", "state": "downloading"})  # under way: not an outcome
    outcomes.count({"type": "shadow", "state": "rejected"})  # not a deployment
    live = LiveFigures(histograms=stages.histograms, connected=lambda: connected[0])
    exporter = PrometheusExporter(0, device="cam-1", host="127.0.0.1", live=live)
    try:
        message = sample_message(
            **UPSTREAM, **gate_figures(GATE), error_ratio=0.25,
            source={"garbage": 4}, deployments_total=outcomes.snapshot(),
        )  # fmt: skip
        exporter.update(message)
        first = _scrape(exporter.port)
        connected[0] = False
        assert 'edgewise_broker_connected{device="cam-1"} 0.0' in _scrape(exporter.port)
        return first
    finally:
        exporter.close()


def test_every_name_follows_prometheus_rules() -> None:
    body = _everything()
    assert problems(body) == [], body
    said = promtool_problems(body)
    assert said is None or said == [], said  # None: no promtool here, the rules above stand in


def _family(families: dict[str, Family], name: str) -> Family:
    found = find(families, name.removesuffix("_total"))
    assert found is not None, f"{name} not served"
    return found


def test_the_families_and_their_types() -> None:
    families = parse(_everything())
    for key, (kind, _) in FIGURES.items():
        assert _family(families, f"edgewise_{key}").kind == kind, key
    assert _family(families, "edgewise_frame_latency_seconds").kind == "histogram"
    assert _family(families, "edgewise_deployments_total").kind == "counter"
    assert _family(families, "edgewise_source_garbage_total").kind == "counter"
    assert _family(families, "process_cpu_seconds_total").kind == "counter"  # default collectors
    assert _family(families, "process_resident_memory_bytes").kind == "gauge"
    assert _family(families, "python_info").kind == "gauge"
    build = families["edgewise_build_info"].samples
    assert build == [("edgewise_build_info", {"device": "cam-1", "version": agent_version()}, 1)]
    assert agent_version() not in ("", "unknown")
    broker = families["edgewise_broker_connected"].samples
    assert broker == [("edgewise_broker_connected", {"device": "cam-1"}, 1.0)]


def test_deployments_by_outcome_start_at_zero() -> None:
    samples = _family(parse(_everything()), "edgewise_deployments_total").samples
    counts = {labels["outcome"]: value for _, labels, value in samples}
    assert counts == {outcome: 0.0 for outcome in OUTCOMES} | {"active": 1.0, "passed": 1.0}


def test_the_status_board_hands_every_event_to_the_outcome_count() -> None:
    """The daemon's wiring: whatever reports through the status board (deployer, boundary,
    shadow runner) is counted by outcome."""
    board = StatusBoard(
        device="cam-1", boot_id="b1", topics=Topics("edgewise"), source_uri="video.avi",
        models=ModelSlot(), notifier=SystemdNotifier(),
    )  # fmt: skip
    outcomes = DeploymentOutcomes()
    board.observe(outcomes.count)
    for state in ("downloading", "verifying", "installed", "active", "passed", "rejected"):
        board.event({"type": "deployment", "state": state, "model": None})
    board.event({"type": "shadow", "state": "rejected"})
    assert outcomes.snapshot() == {
        "active": 1, "passed": 1, "staged": 0, "rolled_back": 0, "rejected": 1,
    }  # fmt: skip


def test_the_latency_histogram_per_stage() -> None:
    samples = parse(_everything())["edgewise_frame_latency_seconds"].samples
    stages = {labels["stage"] for _, labels, _ in samples}
    assert stages == {"queue", "inference", "total"}
    inference = {
        labels["le"]: value
        for name, labels, value in samples
        if name.endswith("_bucket") and labels["stage"] == "inference"
    }
    assert len(inference) == len(BUCKETS_S) + 1
    # 0.2, 3, 3, 40 ms and 20 s: seconds, cumulative.
    assert (inference["0.0005"], inference["0.005"], inference["0.05"]) == (1, 3, 4)
    assert (inference["10.0"], inference["+Inf"]) == (4, 5)
    total = [v for n, labels, v in samples if n.endswith("_sum") and labels["stage"] == "inference"]
    assert abs(total[0] - 20.0462) < 1e-9


def test_the_rules_catch_what_the_old_endpoint_served() -> None:
    """The checks are not vacuous: the names this endpoint used to serve fail them."""
    old = (
        "# HELP edgewise_rss_mb Agent resident memory (MB)\n# TYPE edgewise_rss_mb gauge\n"
        'edgewise_rss_mb{device="a"} 81.0\n'
        "# HELP edgewise_latency_p99_ms p99\n# TYPE edgewise_latency_p99_ms gauge\n"
        'edgewise_latency_p99_ms{device="a"} 14.2\n'
        "# HELP edgewise_cpu_percent CPU\n# TYPE edgewise_cpu_percent gauge\n"
        'edgewise_cpu_percent{device="a"} 37.5\n'
        "# TYPE edgewise_dropped_frames counter\n"
        'edgewise_dropped_frames{device="a"} 3.0\n'
        "# HELP edgewise_fooBar_total x\n# TYPE edgewise_fooBar_total gauge\n"
        "edgewise_fooBar_total 1.0\n"
        "# HELP h x\n# TYPE h histogram\n"
        'h_bucket{le="1.0"} 2.0\nh_bucket{le="0.5"} 1.0\nh_count 2.0\nh_sum 1.0\n'
    )
    found = "\n".join(problems(old))
    for expected in (
        "edgewise_rss_mb: ['mb'] is not a base unit",
        "edgewise_latency_p99_ms: ['ms'] is not a base unit",
        "edgewise_cpu_percent: ['percent'] is not a base unit",
        "edgewise_dropped_frames: no HELP",
        "edgewise_dropped_frames: sample edgewise_dropped_frames does not fit a counter",
        "edgewise_fooBar_total: not snake_case",
        "edgewise_fooBar_total: _total on a gauge",
        "the last bucket is not le=+Inf",
        "le bounds not increasing",
    ):
        assert expected in found, found
