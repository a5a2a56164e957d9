"""The server's own metrics during a load run, as check metrics and a plot (loadtests/server_metrics.py scrapes and
summarizes; this declares the figures, adds them to a result and draws them on the load's time axis)."""

from __future__ import annotations

from collections.abc import Sequence

from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, Plot, Series
from loadtests.server_metrics import GAUGE_STATS, SATURATION_SAMPLES, Sample, Scraper, not_reported, summarize
from workloads.records import RequestRecord

_SAMPLES = "over the /metrics samples taken during the measured window"

SERVER_METRICS = (
    MetricSpec("kv_cache_usage", "", "lower", f"vllm:kv_cache_usage_perc (V0: gpu_cache_usage_perc), mean over the "
               f"server's engines, {_SAMPLES}", "how full the KV cache ran: near 1 the server must queue or preempt",
               stats=GAUGE_STATS),
    MetricSpec("num_requests_running", "requests", None, f"vllm:num_requests_running summed over engines, {_SAMPLES}",
               "requests the server generated at once", stats=GAUGE_STATS),
    MetricSpec("num_requests_waiting", "requests", "lower",
               f"vllm:num_requests_waiting summed over engines, {_SAMPLES}",
               "requests queued inside the server: above 0 the server was saturated", stats=GAUGE_STATS),
    MetricSpec("num_preemptions", "preemptions", "lower",
               "vllm:num_preemptions_total at the window's last sample - at its first", "running requests the server "
               "evicted and recomputed during the window: each one stalls a stream", stats=("total",)),
    MetricSpec("prefix_cache_hit_rate", "", "higher",
               "increase of vllm:prefix_cache_hits_total / increase of vllm:prefix_cache_queries_total over the window "
               "(prompt tokens found cached / prompt tokens looked up)",
               "share of prompt tokens the server did not have to prefill again"),
    MetricSpec("saturation_start_s", "s", "higher",
               f"first sample from which vllm:num_requests_waiting > 0 in {SATURATION_SAMPLES} consecutive samples, "
               "seconds after the window's first request (absent: never saturated)",
               "when the server started queueing requests"),
    MetricSpec("cached_prompt_fraction", "", "higher",
               "sum of usage.prompt_tokens_details.cached_tokens / sum of prompt tokens, successful requests whose "
               "answer reported cached tokens", "share of prompt tokens the server said it served from its cache"),
    MetricSpec("ttft_first_turn_ms", "ms", "lower", "TTFT of the first turns of multi-turn conversations",
               "time to first token of a conversation's opening request (nothing cached)", stats=("mean",)),
    MetricSpec("ttft_later_turns_ms", "ms", "lower", "TTFT of the second and later turns of conversations",
               "time to first token when the history may be cached", stats=("mean",)),
    MetricSpec("server_scrapes", "scrapes", None, "/metrics scrapes that succeeded during the measured window",
               "how densely the server's state was sampled"),
)
"""Every figure of `loadtests.server_metrics.summarize` that a check reports."""

def add_server_metrics(result: CheckResult, samples: Sequence[Sample], failures: int, t0: float, t1: float,
                       interval_s: float) -> None:
    """The figures of the samples in [t0, t1] as metrics; what the server did not report, and the scraping itself,
    in the details (a family the server lacks is "not reported", never a failure)."""
    figures = summarize(samples, t0, t1)
    for stat in GAUGE_STATS:  # each key spelled out, so the catalogue test can check it is declared
        if f"kv_cache_usage.{stat}" in figures:
            result.add_metric(f"kv_cache_usage.{stat}", figures[f"kv_cache_usage.{stat}"])
        if f"num_requests_running.{stat}" in figures:
            result.add_metric(f"num_requests_running.{stat}", figures[f"num_requests_running.{stat}"])
        if f"num_requests_waiting.{stat}" in figures:
            result.add_metric(f"num_requests_waiting.{stat}", figures[f"num_requests_waiting.{stat}"])
    for scalar in ("num_preemptions.total", "prefix_cache_hit_rate", "saturation_start_s"):
        if scalar in figures:
            result.add_metric(scalar, figures[scalar])
    result.add_metric("server_scrapes", figures["scrapes"])
    result.details["server_metrics"] = {
        "interval_s": interval_s, "failed_scrapes": failures,
        "achieved_interval_s": round(figures["scrape_interval_s.mean"], 3) if "scrape_interval_s.mean" in figures
        else None,
        "not_reported": not_reported(samples),
        "saturation": "never (no request waited in the server)" if "saturation_start_s" not in figures
        and "num_requests_waiting.max" in figures else None}


def server_state_plot(samples: Sequence[Sample], t0: float) -> Plot | None:
    """Requests running and waiting and KV-cache usage (in %) over the load's time axis, the same seconds since
    load start as the latency plot; None when the server reported none of them."""
    series = []
    for key, name, scale in (("num_requests_running", "running", 1.0), ("num_requests_waiting", "waiting", 1.0),
                             ("kv_cache_usage", "KV-cache usage %", 100.0)):
        points = [(round(s.t - t0, 3), s.values[key] * scale) for s in samples if key in s.values]
        if points:
            series.append(Series(name, [x for x, _ in points], [y for _, y in points]))
    if not series:
        return None
    return Plot("Server state during the load (its /metrics)", "seconds since load start",
                "requests / KV-cache usage %", series)


def add_prefix_reuse(result: CheckResult, records: Sequence[RequestRecord]) -> None:
    """The client's view of prompt reuse (`loadtests.metrics.prefix_reuse`): what the server reported cached, and
    first against later turns' TTFT in a multi-turn run."""
    from loadtests.metrics import prefix_reuse

    figures = prefix_reuse(records)
    for reuse in ("cached_prompt_fraction", "ttft_first_turn_ms.mean", "ttft_later_turns_ms.mean"):
        if reuse in figures:
            result.add_metric(reuse, figures[reuse])


def scraper_for(base_url: str, interval_s: float) -> Scraper | None:
    """The scraper of a load run against `base_url` (None when scraping is off: interval 0)."""
    return Scraper(f"{base_url}/metrics", interval_s) if interval_s > 0 else None


def report_server_metrics(result: CheckResult, scraper: Scraper | None, records: Sequence[RequestRecord],
                          t_start: float) -> None:
    """A load run's server figures over its measured requests' span (first send to last answer, the window every
    load figure divides by), and the server-state plot placed right after the latency plot."""
    add_prefix_reuse(result, records)
    if scraper is None or not records:
        return
    t0, t1 = min(record.start for record in records), max(record.end for record in records)
    add_server_metrics(result, scraper.samples, scraper.failures, t0, t1, scraper.interval_s)
    plot = server_state_plot(scraper.samples, t_start)
    if plot is not None:
        latency = next((i for i, p in enumerate(result.plots) if p.title.startswith("Latency over time")), None)
        result.plots.insert(len(result.plots) if latency is None else latency + 1, plot)
