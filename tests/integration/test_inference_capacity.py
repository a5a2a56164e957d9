"""Sweeps and the SLA search through the inference check's real load path (real Locust subprocesses, real sockets)
against a fake OpenAI-compatible server whose first-token latency rises past a known request rate."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from dcforge.checks.inference import InferenceCheck, InferenceConfig
from dcforge.checks.serving.capacity import measure_capacity
from dcforge.checks.serving.load import ServingSession
from dcforge.checks.serving.server import free_port
from dcforge.harness.check import CheckContext
from dcforge.harness.processes import ManagedProcess
from dcforge.harness.result import CheckResult
from dcforge.harness.slo import parse_slos
from dcforge.paths import REPO_ROOT
from dcforge.spec.loader import load_environment
from loadtests.llm_protocol import read_records

pytestmark = pytest.mark.slow
CAPACITY_RPS = 40.0
MEDIAN_TTFT_SLO = {"inference.p50_ttft_ms": "< 150"}
"""Between the fake's fast (5 ms) and slow (400 ms) first token: holds below its capacity, breaks above it."""
REGULAR_ARRIVALS = 16.0
"""Burstiness of the search test's arrivals: gamma gaps with CV 0.25. The fake judges its load by the rate it
measures over 1 s, and with Poisson arrivals that measurement is itself noisy (+-16 % at 40 req/s): in simulation
a Poisson point at 0.92x the capacity breaks 8 % of the time and one at 1.1x holds 32 % of the time, which would
test the fake's meter, not the search. With CV 0.25 both are below 0.1 % (and 1.03x breaks 73 % of the time)."""


@dataclass
class FakeEndpoint:
    base_url: str


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    port = free_port()
    with ManagedProcess([sys.executable, "-m", "uvicorn", "tests.integration.capacity_fake_openai:app", "--host",
                         "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=REPO_ROOT,
                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "FAKE_CAPACITY_RPS": str(CAPACITY_RPS)},
                        log_path=tmp_path_factory.mktemp("fake") / "server.log"):
        host = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{host}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "fake server did not start"
                time.sleep(0.1)
        yield host


def measure(fake_server: str, report_dir, capacity: dict, **settings):
    """The check's capacity step against the fake server; returns the report and the check result it fills."""
    secrets = report_dir / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "api-key").write_text("test-key\n")
    session = ServingSession(FakeEndpoint(fake_server), "test-key", secrets, report_dir / "inference", None,
                             prompt_tokens=8, served_name="fake")
    ctx = CheckContext(env=load_environment("local"), report_dir=report_dir, deadline=time.monotonic() + 300,
                       log=lambda line: print(line, flush=True))
    config = InferenceConfig.model_validate({"users": 8, "maxTokens": 4, "capacity": capacity, **settings})
    report = measure_capacity(ctx, config, config.capacity, session, "inference", InferenceCheck.metrics,
                              parse_slos(MEDIAN_TTFT_SLO), {})
    result = CheckResult("inference", declared=InferenceCheck.metrics)
    report.report(result)
    return report, result


def test_search_finds_the_known_capacity_within_ten_percent_in_at_most_six_points(fake_server, tmp_path):
    started = time.monotonic()
    report, result = measure(fake_server, tmp_path, {"pointDurationS": 4, "stopGraceS": 1,
                                                     "search": {"start": 24, "stopRatio": 1.1, "maxSteps": 6}},
                             burstiness=REGULAR_ARRIVALS)
    search = report.search
    tried = [(round(step.load, 2), step.holds) for step in search.steps]
    print(f"capacity search: found {search.capacity:.2f} req/s vs known {CAPACITY_RPS:g} "
          f"({search.capacity / CAPACITY_RPS - 1:+.1%}) in {len(search.steps)} points, "
          f"{time.monotonic() - started:.0f} s: {tried}")
    assert len(search.steps) <= 6
    assert abs(search.capacity - CAPACITY_RPS) <= 0.10 * CAPACITY_RPS, tried
    assert result.metrics["capacity_rps"].value == search.capacity
    assert result.metrics["capacity_search_points"].value == len(search.steps)
    details = result.details["capacity"]["search"]
    assert details["stop_reason"] and "hi/lo <= 1.1" in details["stopping_rule"]
    assert [(round(p["rate_rps"], 2), p["holds"]) for p in details["points"]] == tried
    for point in details["points"]:  # every point a full measurement: figures, verdicts, its own request log
        assert point["figures"]["requests"] >= 10 and point["verdicts"][0]["slo"] == "inference.p50_ttft_ms < 150"
        assert (tmp_path / point["request_log"]).is_file()
        # Open loop: requests in flight at the window's end complete in the grace period; none is sent after it.
        assert point["figures"]["abandoned_at_stop"] == 0
    assert result.details["capacity"]["judged_by"] == ["inference.p50_ttft_ms < 150"]
    titles = [plot.title for plot in result.plots]
    assert "Capacity search: every point tried" in titles and any("Throughput vs latency" in t for t in titles)


def test_rate_and_concurrency_sweeps_measure_every_point_with_its_verdicts(fake_server, tmp_path):
    report, result = measure(fake_server, tmp_path, {"pointDurationS": 2, "stopGraceS": 1,
                                                     "sweep": {"rates": [12, 60], "concurrencies": [1, 2]}})
    assert report.search is None and "capacity_rps" not in result.metrics
    sweeps = result.details["capacity"]["sweeps"]
    assert [(p["rate_rps"], p["holds"]) for p in sweeps["rate"]] == [(12, True), (60, False)]
    assert [(p["users"], p["holds"]) for p in sweeps["concurrency"]] == [(1, True), (2, True)]
    assert sweeps["rate"][1]["broken"][0].startswith("inference.p50_ttft_ms")
    assert sweeps["rate"][0]["arrivals"] == "open loop, poisson arrivals at 12 req/s in total"
    plot, = [plot for plot in result.plots if "Throughput vs latency" in plot.title]
    assert {series.name.split(":")[0] for series in plot.series} == {"rate sweep", "concurrency sweep"}
    assert all(len(series.x) == 2 for series in plot.series)


def test_bursty_arrivals_reach_the_server_as_gamma_gaps(fake_server, tmp_path):
    # vLLM's --burstiness 0.25: gaps with coefficient of variation 2 (Poisson: 1), the mean rate unchanged.
    point = {"pointDurationS": 4, "stopGraceS": 1, "sweep": {"rates": [30]}}
    _, poisson = measure(fake_server, tmp_path / "poisson", point)
    _, bursty = measure(fake_server, tmp_path / "bursty", point, burstiness=0.25)
    assert "gamma arrivals (burstiness 0.25)" in bursty.details["capacity"]["sweeps"]["rate"][0]["arrivals"]
    poisson_cv, bursty_cv = gap_cv(tmp_path / "poisson", poisson), gap_cv(tmp_path / "bursty", bursty)
    assert poisson_cv < 1.35 < bursty_cv, (poisson_cv, bursty_cv)  # each side wrong < 1 time in 1000 (simulated)


def gap_cv(report_dir, result) -> float:
    """Coefficient of variation of the gaps between request starts of the first rate point."""
    point = result.details["capacity"]["sweeps"]["rate"][0]
    starts = sorted(record.start for record in read_records([report_dir / point["request_log"]]))
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) >= 40
    return statistics.pstdev(gaps) / statistics.fmean(gaps)
