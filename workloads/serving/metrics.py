"""Prometheus metrics of the server. Under gunicorn every replica is a process, so the supervisor sets
PROMETHEUS_MULTIPROC_DIR and `/metrics` aggregates all live replicas (prometheus_client multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("dcforge_requests", "HTTP requests by route and status", ["route", "status"])
REQUEST_SECONDS = Histogram("dcforge_request_seconds", "Time to the end of the response", ["route"],
                            buckets=_LATENCY_BUCKETS)
TTFT_SECONDS = Histogram("dcforge_time_to_first_token_seconds", "Submit to first generated token",
                         buckets=_LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("dcforge_prompt_tokens", "Prompt tokens of admitted requests")
GENERATED_TOKENS = Counter("dcforge_generated_tokens", "Tokens generated")
BATCH_SIZE = Histogram("dcforge_batch_size", "Sequences per forward pass", ["phase"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
FORWARD_SECONDS = Histogram("dcforge_forward_seconds", "Duration of one forward pass", ["phase"],
                            buckets=_LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge("dcforge_queue_depth", "Requests waiting for a batch slot", multiprocess_mode="livesum")
ACTIVE_SEQUENCES = Gauge("dcforge_active_sequences", "Sequences being generated", multiprocess_mode="livesum")
SERVED_PRECISION = Gauge("dcforge_served_precision", "1 for the weight precision the replicas serve (fp32, int8)",
                         ["precision"], multiprocess_mode="livemax")


def observe_step(phase: str, batch: int, seconds: float) -> None:
    BATCH_SIZE.labels(phase).observe(batch)
    FORWARD_SECONDS.labels(phase).observe(seconds)


def observe_load(queue_depth: int, active: int) -> None:
    QUEUE_DEPTH.set(queue_depth)
    ACTIVE_SEQUENCES.set(active)


def render() -> tuple[bytes, str]:
    """The exposition text of every live replica (or of this process when not under a supervisor)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_replica(pid: int) -> None:
    """Called by the supervisor when a replica exits, so its live gauges stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
