"""Metrics of a Locust load run, reported alike by `inference` and `inference_failover` (docs/metrics.md#inference).

`loadtests.metrics.summarize` computes them from the per-request log; these declarations give each its unit,
direction, formula, meaning and other names. The canonical names are vLLM `bench serve`'s (`p95_ttft_ms`,
`request_throughput`, ...); AIPerf's names and the names dcforge used before are aliases: shown by `dcforge metrics`
and in report.json, refused as SLO keys with the canonical key named (docs/slos.md#metric-names).
"""

from __future__ import annotations

from dcforge.harness.metrics import FORMER_NAME, MetricAlias, MetricSpec
from loadtests.metrics import LATENCY_STATS, LENGTH_STATS

AIPERF = "aiperf"
_AIPERF_STATS = (("mean", "avg"), ("median", "p50"))
"""AIPerf's statistic names where they differ from ours (its `avg`; it has no median, which is its p50)."""


def _aiperf(name: str) -> MetricAlias:
    return MetricAlias(AIPERF, name, _AIPERF_STATS)


def _former(name: str) -> MetricAlias:
    return MetricAlias(FORMER_NAME, name)


def _latency(name: str, formula: str, meaning: str, aiperf: str | None, former: str) -> MetricSpec:
    aliases = ((_aiperf(aiperf),) if aiperf else ()) + (_former(former),)
    return MetricSpec(name, "ms", "lower", formula, meaning, stats=LATENCY_STATS, stat_first=True, aliases=aliases)


def _length(name: str, what: str, aiperf: str) -> MetricSpec:
    return MetricSpec(name, "tokens", None, f"{what} tokens per successful request (the server's usage count)",
                      f"{what} length distribution of the workload", stats=LENGTH_STATS, stat_first=True,
                      aliases=(_aiperf(aiperf),))


LOAD_METRICS = (
    MetricSpec("requests", "requests", None, "measured requests (warm-up requests excluded)", "size of the sample"),
    MetricSpec("completed", "requests", None, "measured requests with a complete answer",
               "requests served", aliases=(_aiperf("request_count"),)),
    MetricSpec("failed", "requests", "lower",
               "measured requests without a complete answer: an error status, a broken stream, a timeout, or dropped "
               "at the client's in-flight limit", "requests users saw fail",
               aliases=(_aiperf("error_request_count"), _former("failed_requests"))),
    MetricSpec("error_rate", "", "lower", "failed / requests", "share of requests that failed"),
    MetricSpec("duration", "s", None, "last answer - first send of the measured requests",
               "the measurement interval every throughput divides by", aliases=(_aiperf("benchmark_duration"),)),
    MetricSpec("request_throughput", "req/s", "higher", "completed / duration", "served request throughput",
               aliases=(_aiperf("request_throughput"), _former("rps"))),
    MetricSpec("output_throughput", "tokens/s", "higher", "total_output_tokens / duration",
               "generated token throughput",
               aliases=(_aiperf("output_token_throughput"), _former("output_tokens_per_s"))),
    MetricSpec("total_token_throughput", "tokens/s", "higher", "(total_input_tokens + total_output_tokens) / duration",
               "prompt and generated token throughput", aliases=(_former("total_tokens_per_s"),)),
    MetricSpec("request_goodput", "req/s", "higher",
               "successful requests meeting every per-request SLO of `goodput` / duration",
               "throughput of requests that were fast enough to be useful",
               aliases=(_aiperf("goodput"), _former("goodput_rps"))),
    MetricSpec("goodput_fraction", "", "higher", "requests meeting every per-request SLO of `goodput` / requests",
               "share of requests that were fast enough to be useful"),
    MetricSpec("total_input_tokens", "tokens", None, "sum of prompt tokens of the completed requests",
               "prompt tokens served", aliases=(_aiperf("total_isl"),)),
    MetricSpec("total_output_tokens", "tokens", None, "sum of output tokens of the completed requests",
               "tokens generated", aliases=(_aiperf("total_osl"),)),
    _latency("ttft_ms", "first non-empty streamed token time - send time",
             "time to first token: how long a user waits before the answer starts", "time_to_first_token", "ttft_ms"),
    _latency("tpot_ms", "(e2e - TTFT) / (output_tokens - 1), requests with >= 2 tokens",
             "time per output token after the first: the reading speed of the answer", "inter_token_latency",
             "tpot_ms"),
    _latency("itl_ms", "every gap between consecutive non-empty chunks, pooled",
             "inter-token latency: stalls a user sees while the answer streams", "inter_chunk_latency", "itl_ms"),
    _latency("e2el_ms", "last byte time - send time", "end-to-end latency of a whole request", "request_latency",
             "e2e_ms"),
    _length("input_tokens", "prompt", "input_sequence_length"),
    _length("output_tokens", "output", "output_sequence_length"),
    MetricSpec("warmup_requests", "requests", None,
               "requests sent before measuring (warmupPerReplica per replica), kept in the log, in no statistic",
               "how many requests warmed the server up"),
    MetricSpec("replicas_ready_s", "s", "lower", "server start -> every replica loaded",
               "how long the server takes to load its model in every replica"),
)
