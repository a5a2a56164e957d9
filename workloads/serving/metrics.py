"""Prometheus metrics of the server. Under gunicorn every replica is a process, so the supervisor sets
PROMETHEUS_MULTIPROC_DIR and `/metrics` aggregates all live replicas (prometheus_client multiprocess mode).

The engine's state is also published under vLLM's names (`vllm:num_requests_running`, ...; docs/serving.md), so
whatever reads a vLLM server's `/metrics` during a load reads this server the same way."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

if TYPE_CHECKING:
    from workloads.serving.engine import EngineLoad

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
# vLLM's engine metrics (its V1 names), labelled with the served model as vLLM labels them. Running and waiting add
# up over the replicas; each replica's KV usage is its own series (a `pid` label), as vLLM's data-parallel engines
# each report theirs.
VLLM_RUNNING = Gauge("vllm:num_requests_running", "Requests in the engine's running batch", ["model_name"],
                     multiprocess_mode="livesum")
VLLM_WAITING = Gauge("vllm:num_requests_waiting", "Requests waiting for a batch slot", ["model_name"],
                     multiprocess_mode="livesum")
VLLM_KV_USAGE = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage: tokens held by running sequences / capacity (0-1)",
                      ["model_name"], multiprocess_mode="liveall")
VLLM_PREEMPTIONS = Counter("vllm:num_preemptions", "Running sequences evicted from the KV cache (never, here)",
                           ["model_name"])
VLLM_PREFIX_QUERIES = Counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                              ["model_name"])
VLLM_PREFIX_HITS = Counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache", ["model_name"])
SERVED_PRECISION = Gauge("dcforge_served_precision", "1 for the weight precision the replicas serve (fp32, int8)",
                         ["precision"], multiprocess_mode="livemax")


def observe_step(phase: str, batch: int, seconds: float) -> None:
    BATCH_SIZE.labels(phase).observe(batch)
    FORWARD_SECONDS.labels(phase).observe(seconds)


class LoadMetrics:
    """Publishes one replica's `EngineLoad` reports. The engine's prefix counts are running totals; the Prometheus
    counters grow by their increase (a replaced engine process starts its totals again at 0). Preemptions are
    published as the constant 0 they are (`workloads.serving.engine`), so a reader sees the family."""

    def __init__(self, model_name: str):
        self.running, self.waiting, self.kv_usage = (gauge.labels(model_name) for gauge in
                                                     (VLLM_RUNNING, VLLM_WAITING, VLLM_KV_USAGE))
        self.queries, self.hits = VLLM_PREFIX_QUERIES.labels(model_name), VLLM_PREFIX_HITS.labels(model_name)
        VLLM_PREEMPTIONS.labels(model_name).inc(0)
        self._queries_seen = self._hits_seen = 0

    def __call__(self, load: EngineLoad) -> None:
        QUEUE_DEPTH.set(load.waiting)
        ACTIVE_SEQUENCES.set(load.running)
        self.running.set(load.running)
        self.waiting.set(load.waiting)
        self.kv_usage.set(load.kv_usage)
        if load.prefix_queries < self._queries_seen:  # a new engine process: its totals start again
            self._queries_seen = self._hits_seen = 0
        if load.prefix_queries > self._queries_seen:
            self.queries.inc(load.prefix_queries - self._queries_seen)
            self.hits.inc(load.prefix_hits - self._hits_seen)
            self._queries_seen, self._hits_seen = load.prefix_queries, load.prefix_hits


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
