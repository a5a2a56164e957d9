"""Sweeps and the SLA search through the inference check's real load path (real Locust subprocesses, real sockets)
against a fake OpenAI-compatible server whose first-token latency rises past a known request rate."""

from __future__ import annotations

import statistics
import time

import pytest

from benchmarks.capacity_search import CAPACITY_RPS, REGULAR_ARRIVALS, SEARCH, fake_capacity_server
from benchmarks.capacity_search import measure as measure_capacity_of
from loadtests.llm_protocol import read_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    with fake_capacity_server(tmp_path_factory.mktemp("fake")) as base_url:
        yield base_url


def measure(fake_server: str, report_dir, capacity: dict, **settings):
    return measure_capacity_of(fake_server, report_dir, capacity, log=lambda line: print(line, flush=True),
                               **settings)


def test_search_finds_the_known_capacity_within_ten_percent_in_at_most_six_points(fake_server, tmp_path):
    started = time.monotonic()
    report, result = measure(fake_server, tmp_path, SEARCH, burstiness=REGULAR_ARRIVALS)
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


def test_a_point_far_past_capacity_stops_early_with_its_reason_and_a_client_verdict(fake_server, tmp_path):
    """At 3x the fake's capacity its first token goes from 5 ms to 400 ms: the watcher sees the latency grow and
    interrupts Locust well before the 8-s window ends; the point keeps what it measured and breaks with the reason.
    The point below capacity runs its whole window. Both carry the load generator's saturation verdict."""
    started = time.monotonic()
    _, result = measure(fake_server, tmp_path, {"pointDurationS": 8, "stopGraceS": 1,
                                                "sweep": {"rates": [20, 120]}}, burstiness=REGULAR_ARRIVALS)
    below, past = result.details["capacity"]["sweeps"]["rate"]
    assert below["holds"] and below["early_stop"].startswith("none")
    assert past["early_stop"].startswith("latency growing without bound") and not past["holds"]
    assert any(reason.startswith("stopped early: latency growing") for reason in past["broken"])
    window = max(r.end for r in read_records([tmp_path / past["request_log"]])) - \
        min(r.start for r in read_records([tmp_path / past["request_log"]]))
    assert window < 6, window
    for point in (below, past):  # a busy machine may starve the generator: then the verdict says by what
        verdict = point["client_saturation"]
        assert verdict == "not saturated" or all(reason.startswith(("a Locust process", "event-loop lag", "sent "))
                                                 for reason in verdict), verdict
        assert point["valid"] == (verdict == "not saturated")
    print(f"early stop after {window:.1f} s of 8; client: {below['client_saturation']} / "
          f"{past['client_saturation']}; {time.monotonic() - started:.0f} s")
