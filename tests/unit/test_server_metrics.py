"""The server's metrics during a load: parsed from the bundled server's real exposition and from vLLM's, summarized
over the window, scraped from a live HTTP endpoint, reported as check metrics with "not reported" for the rest."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dcforge.checks import load_check
from dcforge.steps.serving.server_metrics import add_server_metrics, server_state_plot
from dcforge.harness.result import CheckResult
from loadtests.server_metrics import Sample, Scraper, parse_exposition, summarize
from workloads.serving import metrics
from workloads.serving.engine import EngineLoad

# vLLM V1 with two data-parallel engines, in the exposition form prometheus_client writes (vLLM's own client):
# family names as vLLM documents them (docs.vllm.ai/en/stable/usage/metrics/ and vllm docs/design/metrics.md),
# counters with their `_total` sample and `_created` gauge, one series per engine.
VLLM_TWO_ENGINES = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
vllm:num_preemptions_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7592e+09
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6000.0
vllm:prefix_cache_queries_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3000.0
vllm:prefix_cache_hits_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1000.0
"""


def test_vllm_exposition_sums_running_waiting_and_counters_and_averages_kv_usage_over_engines():
    assert parse_exposition(VLLM_TWO_ENGINES) == {
        "num_requests_running": 22.0, "num_requests_waiting": 3.0, "kv_cache_usage": pytest.approx(0.7),
        "num_preemptions": 8.0, "prefix_cache_queries": 10000.0, "prefix_cache_hits": 4000.0}


def test_vllm_v0_cache_name_and_absent_families():
    text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n"
    assert parse_exposition(text) == {"kv_cache_usage": 0.25}
    assert parse_exposition("# TYPE other gauge\nother 1\n") == {}
    with pytest.raises(ValueError):
        parse_exposition("this is { not prometheus\n")


def exposition_of(model_name: str) -> str:
    """This process's exposition, only the series of one model (other tests' servers publish in the same
    registry)."""
    return "\n".join(line for line in metrics.render()[0].decode().splitlines()
                     if line.startswith("#") or f'model_name="{model_name}"' in line) + "\n"


def test_the_bundled_servers_own_exposition_reads_back_as_published():
    """The real prometheus_client output of workloads.serving.metrics (this process's registry)."""
    publish = metrics.LoadMetrics("exposition-test")
    before = parse_exposition(exposition_of("exposition-test"))
    publish(EngineLoad(waiting=2, running=3, kv_usage=0.25, prefix_queries=100, prefix_hits=40))
    publish(EngineLoad(waiting=0, running=1, kv_usage=0.125, prefix_queries=150, prefix_hits=60))
    after = parse_exposition(exposition_of("exposition-test"))
    assert (after["num_requests_running"], after["num_requests_waiting"]) == (1, 0)
    assert after["kv_cache_usage"] == 0.125 and after["num_preemptions"] == before.get("num_preemptions", 0)
    assert after["prefix_cache_queries"] - before.get("prefix_cache_queries", 0) == 150
    assert after["prefix_cache_hits"] - before.get("prefix_cache_hits", 0) == 60
    publish(EngineLoad(0, 0, 0.0, 10, 0))  # a replaced engine process: its totals start again
    again = parse_exposition(exposition_of("exposition-test"))
    assert again["prefix_cache_queries"] == after["prefix_cache_queries"] + 10


def samples(rows: list[tuple[float, float, float, float, float]]) -> list[Sample]:
    """(t, waiting, kv usage, queries, hits) rows as samples with 2 running requests each."""
    return [Sample(t, {"num_requests_waiting": waiting, "num_requests_running": 2, "kv_cache_usage": kv,
                       "prefix_cache_queries": queries, "prefix_cache_hits": hits})
            for t, waiting, kv, queries, hits in rows]


def test_window_statistics_counter_increases_hit_rate_and_saturation_start():
    series = samples([(99.5, 9, 0.9, 0, 0),  # before the window: in no figure
                      (100.0, 0, 0.1, 100, 10), (100.5, 1, 0.2, 200, 40), (101.0, 0, 0.3, 300, 70),
                      (101.5, 2, 0.4, 400, 100), (102.0, 3, 0.5, 500, 110), (102.5, 4, 0.6, 600, 130)])
    figures = summarize(series, 100.0, 102.5)
    assert figures["scrapes"] == 6 and figures["scrape_interval_s.mean"] == 0.5
    assert figures["num_requests_waiting.max"] == 4 and figures["num_requests_waiting.mean"] == pytest.approx(10 / 6)
    assert figures["kv_cache_usage.max"] == 0.6 and figures["kv_cache_usage.p50"] == pytest.approx(0.35)
    assert figures["prefix_cache_queries.total"] == 500 and figures["prefix_cache_hit_rate"] == pytest.approx(0.24)
    assert figures["saturation_start_s"] == 1.5  # the lone waiting sample at 100.5 is not saturation
    assert "num_preemptions.total" not in figures


def test_check_metrics_and_plot_report_what_the_server_has_and_name_the_rest(tmp_path):
    result = CheckResult("inference", declared=load_check("inference").metrics)
    series = [Sample(10.0 + i / 2, {"num_requests_running": i, "num_requests_waiting": 0}) for i in range(5)]
    add_server_metrics(result, series, failures=1, t0=10.0, t1=12.0, interval_s=0.5)
    assert result.metrics["num_requests_running.max"].value == 4 and result.metrics["server_scrapes"].value == 5
    assert "kv_cache_usage.max" not in result.metrics and "saturation_start_s" not in result.metrics
    details = result.details["server_metrics"]
    assert details["not_reported"] == ["kv_cache_usage", "num_preemptions", "prefix_cache_queries",
                                       "prefix_cache_hits"]
    assert details["failed_scrapes"] == 1 and details["saturation"].startswith("never")
    plot = server_state_plot(series, t0=9.0)
    assert [s.name for s in plot.series] == ["running", "waiting"] and plot.series[0].x[0] == 1.0
    assert server_state_plot([Sample(1.0, {})], 0.0) is None


class _Exposition(BaseHTTPRequestHandler):
    """Answers 503 to its first scrape, then the running-request gauge counting up."""

    served = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).served += 1
        if self.served == 1:
            self.send_response(503)
            self.end_headers()
            return
        body = f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running {self.served}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_scraper_samples_a_live_endpoint_and_counts_a_failed_scrape():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Scraper(f"http://127.0.0.1:{server.server_port}/metrics", interval_s=0.02) as scraper:
            deadline = time.monotonic() + 20
            while len(scraper.samples) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        server.shutdown()
    assert scraper.failures >= 1 and "503" in scraper.last_error
    values = [sample.values["num_requests_running"] for sample in scraper.samples]
    assert values[:4] == [2, 3, 4, 5] and all(a.t < b.t for a, b in zip(scraper.samples, scraper.samples[1:]))
