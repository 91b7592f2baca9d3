"""Prometheus metrics without a client library: counters, gauges and histograms in text format 0.0.4.

The request path only does dict look-ups and integer additions (the GIL makes each update
atomic enough for monotonic counters; a lock guards label creation and exposition), so the
cost per request stays in the microseconds.

Example:
    >>> m = ServiceMetrics()
    >>> m.observe_request("/v1/retrieve", 200, 0.002)
    >>> "plexus_requests_total" in m.render()
    True
"""

from __future__ import annotations

import bisect
import threading
import time

__all__ = ["Counter", "Gauge", "Histogram", "ServiceMetrics", "LATENCY_BUCKETS"]

# Seconds: fine below 10 ms, where the service is expected to answer.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        for key, value in sorted(dict(self._values).items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {_number(value)}")
        return lines


class Gauge(Counter):
    """A value that can go up and down, or be replaced (e.g. `model_info{version=...} 1`)."""

    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        self._values[labels] = value

    def replace(self, *labels: str, value: float = 1.0) -> None:
        """Drop every other label set: for info-style gauges that name the current state."""
        with self._lock:
            self._values = {labels: value}


class Histogram(_Metric):
    """Cumulative-bucket histogram per label set (observations in seconds)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self._series.get(labels)
        if series is None:
            with self._lock:
                series = self._series.setdefault(labels, [0.0] * (len(self.buckets) + 3))
        # Layout: per-bucket (non-cumulative) counts, +Inf bucket, sum, count.
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-2] += value
        series[-1] += 1

    def count(self, *labels: str) -> int:
        series = self._series.get(labels)
        return int(series[-1]) if series else 0

    def render(self) -> list[str]:
        lines = self.header()
        for key, series in sorted(dict(self._series).items()):
            snapshot = list(series)
            running = 0.0
            for bound, count in zip((*self.buckets, float("inf")), snapshot, strict=False):
                running += count
                le = f'le="{_number(bound)}"'
                lines.append(
                    f"{self.name}_bucket{_labels(self.label_names, key, le)} {_number(running)}"
                )
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {snapshot[-2]!r}")
            lines.append(
                f"{self.name}_count{_labels(self.label_names, key)} {_number(snapshot[-1])}"
            )
        return lines


class ServiceMetrics:
    """The service's metrics: requests by endpoint and status, latency, model state, swaps."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = Counter(
            "plexus_requests_total",
            "HTTP requests by endpoint and status code.",
            ("endpoint", "status"),
        )
        self.latency = Histogram(
            "plexus_request_latency_seconds",
            "Time from request received to response ready, by endpoint.",
            ("endpoint",),
        )
        self.candidates = Counter(
            "plexus_retrieved_queries_total", "Queries answered, by retrieval mode.", ("mode",)
        )
        self.skipped_history = Counter(
            "plexus_unknown_history_items_total", "History item ids skipped as unknown."
        )
        self.batch_size = Histogram(
            "plexus_batch_size",
            "Queries per model call (micro-batches and batch requests).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.model_info = Gauge(
            "plexus_model_info", "The bundle that is serving (value 1).", ("name", "version")
        )
        self.model_loaded_at = Gauge(
            "plexus_model_loaded_timestamp_seconds", "When the serving bundle was switched in."
        )
        self.swaps = Counter(
            "plexus_model_swaps_total", "Bundles switched in (the first load counts)."
        )
        self.refusals = Counter(
            "plexus_model_refusals_total",
            "Bundles refused (load or smoke query failed).",
            ("version",),
        )
        self.last_refusal = Gauge(
            "plexus_model_last_refusal_info",
            "The last refused bundle and why (value = unix time of the refusal).",
            ("version", "reason"),
        )
        self.registry_errors = Counter(
            "plexus_registry_poll_errors_total", "Registry polls that failed (alias not resolved)."
        )
        self.ready = Gauge("plexus_ready", "1 when a warmed bundle is serving.")

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(endpoint, str(status))
        self.latency.observe(seconds, endpoint)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.candidates,
            self.skipped_history,
            self.batch_size,
            self.model_info,
            self.model_loaded_at,
            self.swaps,
            self.refusals,
            self.last_refusal,
            self.registry_errors,
            self.ready,
        ):
            lines += metric.render()
        lines.append("# HELP plexus_uptime_seconds Seconds since the service started.")
        lines.append("# TYPE plexus_uptime_seconds gauge")
        lines.append(f"plexus_uptime_seconds {time.time() - self.started:.3f}")
        return "\n".join(lines) + "\n"
