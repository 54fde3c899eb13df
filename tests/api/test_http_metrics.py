"""``HttpRequests`` (opendance/metrics.py), the lock-free HTTP request counter and latency
histogram, exposes exactly what prometheus_client's own Counter and Histogram expose for the
same requests: every count, bucket and sum, bucket edges included."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opendance.metrics import HTTP_BUCKETS, HttpRequests


def samples(registry: CollectorRegistry) -> dict:
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # prometheus_client's creation times: not kept here
            found[sample.name, tuple(sorted(sample.labels.items()))] = round(sample.value, 9)
    return found


def test_the_exposition_is_prometheus_clients_for_the_same_requests():
    rng = random.Random(7)
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = HttpRequests()
    ours_registry.register(ours)
    requests = Counter("opendance_http_requests", "HTTP requests", ["method", "route", "status"], registry=theirs_registry)
    latency = Histogram(
        "opendance_http_request_seconds",
        "HTTP request latency",
        ["method", "route"],
        buckets=HTTP_BUCKETS,
        registry=theirs_registry,
    )
    edges = [*HTTP_BUCKETS, 0.0, 31.0, 1e-9]  # on a bucket's bound: counted in that bucket (le)
    for _ in range(2000):
        method = rng.choice(["GET", "POST", "OTHER"])
        route = rng.choice(["/v1/video/generations", "/v1/video/generations/{task_id}", "unmatched"])
        status = rng.choice([200, 400, 404, 429, 500])
        seconds = rng.choice(edges) if rng.random() < 0.3 else rng.expovariate(20)
        ours.record(method, route, status, seconds)
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route).observe(seconds)
    assert samples(ours_registry) == samples(theirs_registry)


def test_no_requests_no_series():
    registry = CollectorRegistry()
    registry.register(HttpRequests())
    assert samples(registry) == {}
