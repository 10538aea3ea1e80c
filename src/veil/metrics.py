"""Prometheus metrics, one registry per gateway instance (no module-level state).

Labels carry tiers, providers, models and statuses — never tenants' content.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("tier", "provider", "model", "status")
        self.requests = Counter(
            "veil_requests", "Chat requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "veil_request_duration_seconds",
            "Time from request to last byte",
            ("tier", "provider", "model"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "veil_tokens",
            "Tokens metered",
            ("tier", "provider", "model", "direction"),
            registry=self.registry,
        )
        self.redactions = Counter(
            "veil_redactions",
            "Personal-data values replaced before a request left, by type",
            ("type", "provider"),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "veil_queue_depth",
            "Requests admitted to a local model (running or waiting)",
            ("provider",),
            registry=self.registry,
        )

    def watch_queue(self, provider: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(provider).set_function(depth)

    def observe(
        self,
        tier: str,
        provider: str,
        model: str,
        status: int,
        seconds: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.requests.labels(tier, provider, model, str(status)).inc()
        self.latency.labels(tier, provider, model).observe(seconds)
        if prompt_tokens:
            self.tokens.labels(tier, provider, model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(tier, provider, model, "completion").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
