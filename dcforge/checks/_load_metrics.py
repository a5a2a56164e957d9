"""Metrics of a Locust load run, reported alike by `inference` and `inference_failover` (docs/metrics.md#inference).

`loadtests.metrics.summarize` computes them from the per-request log; these declarations give each its unit,
direction, formula and meaning. Percentile statistics are the ones `summarize` computes (`PERCENTILES`).
"""

from __future__ import annotations

from dcforge.harness.metrics import MetricSpec
from loadtests.metrics import PERCENTILES

PERCENTILE_STATS = tuple(f"p{p}" for p in PERCENTILES)

SUMMARY_NOT_REPORTED = frozenset({"interval_s"})
"""Summary entries that only serve to compute others (the measurement interval), not reported as metrics."""

LOAD_METRICS = (
    MetricSpec("requests", "requests", None, "requests sent during the load run", "size of the sample"),
    MetricSpec("failed_requests", "requests", "lower",
               "requests without a complete answer: an error status, a broken stream, a timeout, or dropped at the "
               "client's in-flight limit", "requests users saw fail"),
    MetricSpec("error_rate", "", "lower", "failed requests / requests", "share of requests that failed"),
    MetricSpec("rps", "req/s", "higher", "successful requests / measurement interval", "served request throughput"),
    MetricSpec("output_tokens_per_s", "tokens/s", "higher",
               "sum(output_tokens of successful requests) / measurement interval", "generated token throughput"),
    MetricSpec("total_tokens_per_s", "tokens/s", "higher",
               "sum(prompt + output tokens of successful requests) / measurement interval",
               "prompt and generated token throughput"),
    MetricSpec("goodput_rps", "req/s", "higher",
               "successful requests meeting every per-request SLO / measurement interval",
               "throughput of requests that were fast enough to be useful"),
    MetricSpec("goodput_fraction", "", "higher", "requests meeting every per-request SLO / requests",
               "share of requests that were fast enough to be useful"),
    MetricSpec("ttft_ms", "ms", "lower", "first non-empty streamed token time - send time",
               "time to first token: how long a user waits before the answer starts", stats=PERCENTILE_STATS),
    MetricSpec("tpot_ms", "ms", "lower", "(e2e - TTFT) / (output_tokens - 1), requests with >= 2 tokens",
               "time per output token after the first: the reading speed of the answer", stats=PERCENTILE_STATS),
    MetricSpec("itl_ms", "ms", "lower", "every gap between consecutive non-empty chunks, pooled",
               "inter-token latency: stalls a user sees while the answer streams", stats=PERCENTILE_STATS),
    MetricSpec("e2e_ms", "ms", "lower", "last byte time - send time", "end-to-end latency of a whole request",
               stats=PERCENTILE_STATS),
    MetricSpec("replicas_ready_s", "s", "lower", "server start -> every replica loaded",
               "how long the server takes to load its model in every replica"),
)
