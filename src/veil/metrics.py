"""Prometheus metrics, one registry per gateway instance (no module-level state).

Labels carry tiers, providers, models and statuses — never tenants' content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from veil.providers.resilience import STATE_VALUES, State

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

        self.upstream_attempts = Counter(
            "veil_upstream_attempts",
            "Calls to upstream deployments, by outcome (ok, an error code, breaker_open)",
            ("provider", "model", "outcome"),
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "veil_breaker_state",
            "Circuit breaker of each deployment: 0 closed, 1 half-open, 2 open",
            ("provider", "model"),
            registry=self.registry,
        )
        self.breaker_opened = Counter(
            "veil_breaker_opened",
            "Times a deployment's circuit breaker opened",
            ("provider", "model"),
            registry=self.registry,
        )

        self.node_refusals = Counter(
            "veil_node_refusals",
            "Private nodes refused, by reason (not_in_log, expired, fork, …)",
            ("provider", "reason"),
            registry=self.registry,
        )

        # Labelled children, looked up once: ``labels()`` costs microseconds per call.
        self._observed: dict[tuple[str, str, str, int], tuple[Any, Any, Any, Any]] = {}
        self._attempts: dict[tuple[str, str, str], Any] = {}

    def node_refused(self, provider: str, reason: str) -> None:
        self.node_refusals.labels(provider, reason).inc()

    def attempt(self, provider: str, model: str, outcome: str) -> None:
        """Count one upstream call (or one skipped by an open breaker) by its outcome."""
        key = (provider, model, outcome)
        child = self._attempts.get(key)
        if child is None:
            child = self._attempts[key] = self.upstream_attempts.labels(*key)
        child.inc()

    def breaker_changed(self, provider: str, model: str, state: State) -> None:
        value = STATE_VALUES[state]
        self.breaker_state.labels(provider, model).set(value)
        if state == "open":
            self.breaker_opened.labels(provider, model).inc()

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
        key = (tier, provider, model, status)
        children = self._observed.get(key)
        if children is None:
            children = self._observed[key] = (
                self.requests.labels(tier, provider, model, str(status)),
                self.latency.labels(tier, provider, model),
                self.tokens.labels(tier, provider, model, "prompt"),
                self.tokens.labels(tier, provider, model, "completion"),
            )
        requests, latency, prompt, completion = children
        requests.inc()
        latency.observe(seconds)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
