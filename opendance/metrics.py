"""Prometheus metrics, in a registry owned by one app (nothing global, nothing at import).

The runner feeds them as one of its task listeners (``task_changed``: the durations of finished
tasks) and one of its observers (``observe``: engine loads, every upstream request of a relay
channel); the store and the runner's health are read at scrape time (``runner_gauges``).

``opendance_tasks_finished_total`` is read from the store at scrape time (``count_finished``):
a finish is counted by the write that makes it, whoever makes it (a worker, another API server,
a retry after a Temporal outage), exactly once, and every API server of a cluster reports the
same numbers (take one, or the max; never the sum). The other series count what this process
saw: sum them over the API servers.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .domain import RawStatus
from .runner.messages import ModelLoaded, UpstreamRequest
from .store import Task

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HttpRequests:
    """``opendance_http_requests_total`` (by method, route and status) and the
    ``opendance_http_request_seconds`` histogram (by method and route), as a collector.

    Every request records here, so it is kept as plain numbers: one list per (method, route,
    status), the count of each latency bucket and the sum of seconds, with no lock (a
    prometheus_client child takes one per ``inc`` and per ``observe``, and finds its bucket
    by a loop). ``record`` runs on the event loop only; a scrape (another thread) reads a copy of
    each list, so it sees every request whole or not at all, give or take the one being added.
    The label values are bounded by the caller (api/app.py: ``MetricsMiddleware``)."""

    def __init__(self, buckets: tuple[float, ...] = HTTP_BUCKETS) -> None:
        self.buckets = buckets
        self._series: dict[tuple[str, str, int], list] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        counts = self._series.get((method, route, status))
        if counts is None:  # a bucket per bound and +Inf, then the sum
            counts = self._series[method, route, status] = [0] * (len(self.buckets) + 1) + [0.0]
        counts[bisect.bisect_left(self.buckets, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        series = [(key, list(counts)) for key, counts in list(self._series.items())]
        requests = CounterMetricFamily("opendance_http_requests", "HTTP requests", labels=["method", "route", "status"])
        latency: dict[tuple[str, str], list] = {}
        for (method, route, status), counts in sorted(series):
            requests.add_metric([method, route, str(status)], sum(counts[:-1]))
            merged = latency.setdefault((method, route), [0] * len(counts))
            for i, n in enumerate(counts):
                merged[i] += n
        yield requests
        seconds = HistogramMetricFamily("opendance_http_request_seconds", "HTTP request latency", labels=["method", "route"])
        for (method, route), counts in latency.items():
            cumulative, buckets = 0, []
            for bound, n in zip((*self.buckets, float("inf")), counts[:-1], strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            seconds.add_metric([method, route], buckets, counts[-1])
        yield seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.http = HttpRequests()
        r.register(self.http)
        self.created = Counter("opendance_tasks_created", "tasks created", ["model", "mode"], registry=r)
        self.task_seconds = Histogram(
            "opendance_task_seconds",
            "wall time from start to completion",
            ["model"],
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.engine_seconds = Histogram(
            "opendance_engine_seconds",
            "engine time per completed task",
            ["model"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.model_load = Gauge("opendance_model_load_seconds", "time the last load of an engine took", ["engine"], registry=r)
        self.model_loads = Counter("opendance_model_loads", "engine loads by workers", ["engine"], registry=r)
        self.load_failures: dict[str, dict[str, object]] = {}  # model -> the last failed load (engine_cache)
        self.relay_requests = Counter(
            "opendance_relay_requests", "requests to upstream relay channels", ["channel", "op"], registry=r
        )
        self.relay_failures = Counter(
            "opendance_relay_failures",
            "upstream requests that failed as outages do (network, timeout, 429, 5xx)",
            ["channel", "op"],
            registry=r,
        )
        self.relay_seconds = Histogram(
            "opendance_relay_request_seconds",
            "latency of upstream requests",
            ["channel", "op"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )

    def add_collector(self, collect) -> None:
        """``collect()`` returns {name: (help, {labels tuple: value}, label names)} at scrape time."""

        class _C:
            def collect(self_inner):
                for name, (help_, values, labels) in collect().items():
                    fam = GaugeMetricFamily(name, help_, labels=labels)
                    for label_values, v in values.items():
                        fam.add_metric(list(label_values), v)
                    yield fam

        self.registry.register(_C())

    def count_finished(self, counts) -> None:
        """``counts()`` returns {(model, raw status): tasks that ever ended so} (the store's
        ``finished_counts``), read at scrape time."""

        class _Finished:
            def collect(self_inner):
                fam = CounterMetricFamily(
                    "opendance_tasks_finished",
                    "tasks that reached a final state, from the store (the same on every API server: do not sum)",
                    labels=["model", "raw_status"],
                )
                for (model, raw_status), n in sorted(counts().items()):
                    fam.add_metric([model, raw_status], n)
                yield fam

        self.registry.register(_Finished())

    def model_loaded(self, engine: str, seconds: float) -> None:
        self.model_load.labels(engine).set(seconds)
        self.model_loads.labels(engine).inc()

    async def task_changed(self, task: Task) -> None:
        """A runner's task listener: how long a completed task took (its count is the store's)."""
        if task.raw_status is RawStatus.COMPLETED:
            self.task_finished(task, task.engine_seconds)

    def observe(self, event: object) -> None:
        """A runner's observer: what its executors saw."""
        if isinstance(event, ModelLoaded):
            if event.error is not None:  # shown in /readyz until a later load of that model works
                self.load_failures[event.model or event.engine] = {
                    "engine": event.engine,
                    "error": event.error,
                    "retry_at": time.time() + (event.retry_in or 0),
                }
                return
            self.load_failures.pop(event.model or event.engine, None)
            self.model_loaded(event.engine, event.seconds)
        elif isinstance(event, UpstreamRequest):
            self.relay_requests.labels(event.channel, event.op).inc()
            if event.failed:
                self.relay_failures.labels(event.channel, event.op).inc()
            self.relay_seconds.labels(event.channel, event.op).observe(event.seconds)

    def task_finished(self, task: Task, engine_seconds: float | None) -> None:
        if task.raw_status is RawStatus.COMPLETED and task.started_at and task.completed_at:
            self.task_seconds.labels(task.model).observe(task.completed_at - task.started_at)
            if engine_seconds is not None:
                self.engine_seconds.labels(task.model).observe(engine_seconds)

    @staticmethod
    def runner_gauges(health: dict) -> dict:
        """Gauges from the runner's health: worker processes, relay channels' breakers."""
        channels = (health.get("executors") or {}).get("upstream", {}).get("channels", {})
        return {
            "opendance_workers_alive": ("worker processes alive", {(): health.get("workers_alive", 0)}, []),
            "opendance_relay_channel_open": (
                "1 while a relay channel is skipped for its cool-down (circuit breaker open)",
                {(name,): 1 if c["state"] == "open" else 0 for name, c in channels.items()},
                ["channel"],
            ),
            "opendance_relay_channel_failures_in_a_row": (
                "failed requests in a row of a relay channel",
                {(name,): c["failures_in_a_row"] for name, c in channels.items()},
                ["channel"],
            ),
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)
