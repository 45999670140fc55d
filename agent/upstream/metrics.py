"""The Prometheus endpoint: telemetry's figures (``telemetry.FIGURES``) on ``/metrics``, with
the latency histograms, the build and model, the broker connection and the standard
``process_*``/``python_*`` metrics of prometheus-client's default collectors.

Figures from the last telemetry message are as of that message (one interval old at most); the
histograms and the broker connection are read at each scrape.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.inference.stats import BUCKETS_S, Histogram
from agent.upstream.telemetry import FIGURES

_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def agent_version() -> str:
    """The agent's version for ``edgewise_build_info``: ``agent.__version__``, else the
    installed distribution's, else ``unknown`` (a source tree that was never installed)."""
    import agent

    version = getattr(agent, "__version__", None)
    if isinstance(version, str) and version:
        return version
    try:
        return importlib.metadata.version("edgewise")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class LiveFigures:
    """What ``/metrics`` reads at every scrape: ``histograms`` (``StageStats.histograms``) and
    ``connected`` (whether the link holds a broker connection now)."""

    histograms: Callable[[], Mapping[str, Histogram]] | None = None
    connected: Callable[[], bool] | None = None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class _AgentCollector:
    """A prometheus-client collector: builds every ``edgewise_*`` family at scrape time."""

    def __init__(self, device: str, live: LiveFigures, version: str):
        self._device, self._live, self._version = device, live, version
        self._lock = threading.Lock()
        self._message: dict[str, object] = {}

    def take(self, message: dict[str, object]) -> None:
        with self._lock:
            self._message = dict(message)

    def describe(self) -> list[Any]:
        return []  # the families depend on the messages: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            message = self._message
        device = self._device
        build = GaugeMetricFamily(
            "edgewise_build_info", "The agent's version (value 1)", labels=["device", "version"]
        )
        build.add_metric([device, self._version], 1)
        yield build
        if self._live.connected is not None:
            connected = GaugeMetricFamily(
                "edgewise_broker_connected",
                "1 while the agent holds a connection to the broker, else 0",
                labels=["device"],
            )
            connected.add_metric([device], 1 if self._live.connected() else 0)
            yield connected
        yield from self._figures(message)
        yield from self._model(message)
        yield from self._deployments(message)
        yield from self._sources(message)
        yield from self._histograms()

    def _figures(self, message: Mapping[str, object]) -> Iterator[Any]:
        """``FIGURES`` the message carries; one it no longer carries is withdrawn."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for key, (kind, help_) in FIGURES.items():
            value = _number(message.get(key))
            if value is None:
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            metric = family(f"edgewise_{key}", help_, labels=["device"])
            metric.add_metric([self._device], value)
            yield metric

    def _model(self, message: Mapping[str, object]) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        model = message.get("model")
        if not isinstance(model, dict):
            return
        info = GaugeMetricFamily(
            "edgewise_model_info",
            "The serving model (value 1)",
            labels=["device", "name", "version"],
        )
        info.add_metric([self._device, str(model.get("name")), str(model.get("version"))], 1)
        yield info

    def _deployments(self, message: Mapping[str, object]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        counts = message.get("deployments_total")
        if not isinstance(counts, dict) or not counts:
            return
        family = CounterMetricFamily(
            "edgewise_deployments_total",
            "Deployment steps that ended something, by outcome (active, passed, staged, "
            "rolled_back, rejected), since start",
            labels=["device", "outcome"],
        )
        for outcome, count in counts.items():
            if _number(count) is not None:
                family.add_metric([self._device, str(outcome)], float(count))
        yield family

    def _sources(self, message: Mapping[str, object]) -> Iterator[Any]:
        """A source's counters differ by kind (see its docs); each is a counter of its own."""
        from prometheus_client.core import CounterMetricFamily

        source = message.get("source")
        for key, value in source.items() if isinstance(source, dict) else ():
            number = _number(value)
            if number is None or not _NAME.fullmatch(str(key)):
                continue
            help_ = f"Source counter {key!r} (see the source kind's docs), since start"
            family = CounterMetricFamily(f"edgewise_source_{key}_total", help_, labels=["device"])
            family.add_metric([self._device], number)
            yield family

    def _histograms(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        stages = self._live.histograms() if self._live.histograms is not None else {}
        if not stages:
            return
        family = HistogramMetricFamily(
            "edgewise_frame_latency_seconds",
            "Time each frame spent in each pipeline stage (total: end to end), since start",
            labels=["device", "stage"],
        )
        for stage, histogram in stages.items():
            buckets = [
                (floatToGoString(bound), float(count))
                for bound, count in zip(BUCKETS_S, histogram.counts, strict=True)
            ]
            buckets.append(("+Inf", float(histogram.count)))
            family.add_metric([self._device, stage], buckets, sum_value=histogram.sum_s)
        yield family


class PrometheusExporter:
    """Serves the agent's metrics on ``http://HOST:PORT/metrics``.

    Needs the optional ``prometheus-client`` package. ``port=0`` picks a free port; ``port``
    then tells which. ``update`` takes each telemetry message; ``live`` is read at every scrape.
    """

    def __init__(
        self, port: int, device: str, host: str = "0.0.0.0", live: LiveFigures | None = None
    ):
        try:
            import prometheus_client
        except ImportError as exc:
            raise RuntimeError(
                "the Prometheus endpoint needs prometheus-client: pip install prometheus-client"
            ) from exc
        # A private registry: several exporters (tests, or two agents in one process) must not
        # collide on the global one. It gets the default collectors' process_* and python_*.
        self._registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self._registry)
        prometheus_client.PlatformCollector(registry=self._registry)
        prometheus_client.GCCollector(registry=self._registry)
        self._collector = _AgentCollector(device, live or LiveFigures(), agent_version())
        self._registry.register(self._collector)
        started = prometheus_client.start_http_server(port, addr=host, registry=self._registry)
        # Older versions return None: their server cannot be stopped.
        self._server: Any = started[0] if started else None
        self._thread: threading.Thread | None = started[1] if started else None
        self.port = self._server.server_port if self._server is not None else port

    def update(self, message: dict[str, object]) -> None:
        """Serve the figures of this ``telemetry_message`` from now on; a figure it no longer
        carries is withdrawn rather than left at a stale value."""
        self._collector.take(message)

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
