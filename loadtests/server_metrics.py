"""The serving engine's own state during a load, from its Prometheus `/metrics` (docs/metrics.md#inference): KV-cache
usage, requests running and waiting, preemptions and prefix-cache lookups under vLLM's metric names, scraped every
`interval_s` by a thread beside the load generator and kept as a time series.

Any server that exposes some of these families works (vLLM, the bundled server, ...): a family it does not expose
is "not reported", never an error, and a scrape that fails is counted and skipped.

Statistics over the samples taken inside the measured window [t0, t1]: gauges -> max, mean and percentiles of the
samples (each sample weighs the same: scrapes are evenly spaced); counters -> last sample - first sample;
prefix-cache hit rate = increase of hits / increase of queries; saturation starts at the first sample from which
requests waited (num_requests_waiting > 0) in SATURATION_SAMPLES consecutive samples, in seconds after t0.

    python -m loadtests.server_metrics http://127.0.0.1:8000 --seconds 10     # watch any server
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

GAUGE_STATS = ("max", "mean", "p50", "p95")
SATURATION_SAMPLES = 2
"""Consecutive samples with requests waiting that mark saturation (one alone may be a burst's instant)."""


@dataclass(frozen=True)
class ServerSeries:
    key: str
    """Our name (the metric key's stem in a check: `kv_cache_usage.max`)."""
    families: tuple[str, ...]
    """Prometheus family names in order of preference (the parser's family names: counters without `_total`)."""
    counter: bool
    combine: str
    """How several series of a family (replicas, engines) make one value: "sum" or "mean"."""


SERIES = (
    # vLLM V1 names the KV usage kv_cache_usage_perc; V0 named it gpu_cache_usage_perc. A fraction, 0-1, in both.
    ServerSeries("kv_cache_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), False, "mean"),
    ServerSeries("num_requests_running", ("vllm:num_requests_running",), False, "sum"),
    ServerSeries("num_requests_waiting", ("vllm:num_requests_waiting",), False, "sum"),
    ServerSeries("num_preemptions", ("vllm:num_preemptions",), True, "sum"),
    ServerSeries("prefix_cache_queries", ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"), True, "sum"),
    ServerSeries("prefix_cache_hits", ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"), True, "sum"),
)
GAUGES = tuple(series.key for series in SERIES if not series.counter)


def parse_exposition(text: str) -> dict[str, float]:
    """Our key -> value of every series in one Prometheus exposition text that has one of its families (several
    label sets combined as the series says); ValueError when the text is not Prometheus format."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        sample_name = family.name + ("_total" if family.type == "counter" else "")
        values[family.name] = [sample.value for sample in family.samples if sample.name == sample_name]
    parsed = {}
    for series in SERIES:
        found = next((values[name] for name in series.families if values.get(name)), None)
        if found:
            parsed[series.key] = float(sum(found) if series.combine == "sum" else np.mean(found))
    return parsed


@dataclass
class Sample:
    t: float
    """Unix time of the scrape (midway between sending it and its answer)."""
    values: dict[str, float]


@dataclass
class Scraper:
    """Scrapes `url` every `interval_s` in a thread while in its `with` block; `samples` is the time series."""

    url: str
    interval_s: float = 0.5
    timeout_s: float = 2.0
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0
    """Scrapes that failed (connection refused, timeout, not Prometheus text): skipped, counted."""
    last_error: str = ""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-metrics-scraper", daemon=True)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        import httpx

        # verify=False: the bundled server's TLS certificate is self-signed; nothing secret is sent or read here.
        with httpx.Client(verify=False, timeout=self.timeout_s) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                sent = time.time()
                try:
                    response = client.get(self.url)
                    response.raise_for_status()
                    values = parse_exposition(response.text)
                    self.samples.append(Sample((sent + time.time()) / 2, values))
                except (httpx.HTTPError, ValueError) as error:
                    self.failures += 1
                    self.last_error = f"{type(error).__name__}: {error}"
                next_at += self.interval_s
                self._stop.wait(max(0.0, next_at - time.monotonic()))


def in_window(samples: Sequence[Sample], t0: float, t1: float) -> list[Sample]:
    return [sample for sample in samples if t0 <= sample.t <= t1]


def not_reported(samples: Sequence[Sample]) -> list[str]:
    """Our keys of the series no sample carried."""
    seen = {key for sample in samples for key in sample.values}
    return [series.key for series in SERIES if series.key not in seen]


def saturation_start_s(samples: Sequence[Sample], t0: float) -> float | None:
    """Seconds after t0 of the first sample from which SATURATION_SAMPLES consecutive samples had requests
    waiting; None when that never happened (or the server does not report waiting requests)."""
    run = 0
    for index, sample in enumerate(samples):
        run = run + 1 if sample.values.get("num_requests_waiting", 0) > 0 else 0
        if run == SATURATION_SAMPLES:
            return samples[index - run + 1].t - t0
    return None


def summarize(samples: Sequence[Sample], t0: float, t1: float) -> dict[str, float]:
    """Flat figures of the samples inside [t0, t1] (module docstring): `<gauge>.<stat>`, `<counter>.total`,
    `prefix_cache_hit_rate`, `saturation_start_s`, `scrapes`, `scrape_interval_s.mean`. A figure whose series the
    server did not report is absent."""
    window = in_window(samples, t0, t1)
    figures: dict[str, float] = {"scrapes": float(len(window))}
    if len(window) >= 2:
        figures["scrape_interval_s.mean"] = (window[-1].t - window[0].t) / (len(window) - 1)
    for series in SERIES:
        values = [sample.values[series.key] for sample in window if series.key in sample.values]
        if not values:
            continue
        if series.counter:
            figures[f"{series.key}.total"] = values[-1] - values[0]
        else:
            array = np.asarray(values)
            figures.update({f"{series.key}.max": float(array.max()), f"{series.key}.mean": float(array.mean()),
                            f"{series.key}.p50": float(np.percentile(array, 50)),
                            f"{series.key}.p95": float(np.percentile(array, 95))})
    queries = figures.get("prefix_cache_queries.total")
    if queries and "prefix_cache_hits.total" in figures:
        figures["prefix_cache_hit_rate"] = figures["prefix_cache_hits.total"] / queries
    start = saturation_start_s(window, t0)
    if start is not None:
        figures["saturation_start_s"] = start
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url", help="the server's address; /metrics is scraped")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between scrapes")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to watch")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.seconds <= 0:
        parser.error("--interval and --seconds must be > 0")
    started = time.time()
    with Scraper(args.base_url.rstrip("/") + "/metrics", args.interval) as scraper:
        time.sleep(args.seconds)
    if not scraper.samples:
        print(f"{args.base_url}: no scrape succeeded ({scraper.last_error})", file=sys.stderr)
        return 2
    figures = summarize(scraper.samples, started, time.time())
    print(json.dumps({**figures, "not_reported": not_reported(scraper.samples), "failures": scraper.failures},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
