"""The SLA search as a pure function, which SLOs judge a load point, and the capacity settings."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from dcforge.steps.serving.load_metrics import LOAD_METRICS
from dcforge.steps.serving.capacity import (CapacitySettings, LoadPoint, PointOutcome, StoppingRule, StopSearch,
                                             next_load, point_slos, search_capacity)
from dcforge.steps.serving.load import RUN_METRICS
from dcforge.harness.slo import SloResult, parse_slos
from dcforge.spec.loader import load_environment


def threshold(capacity: float):
    """measure(load) of a pool whose SLOs hold up to `capacity` and break above it; records every load asked."""
    asked: list[float] = []

    def measure(load: float) -> bool:
        asked.append(load)
        return load <= capacity

    return measure, asked


@pytest.mark.parametrize("capacity", [2.6, 5.5, 9.0, 13.0, 21.7, 39.0])
def test_search_brackets_the_capacity_within_the_stop_ratio_in_at_most_six_points(capacity):
    # Any capacity within a factor 4 of the start: 1-3 points bracket it, 3 bisections bring hi/lo from 2 to 1.09.
    measure, asked = threshold(capacity)
    result = search_capacity(measure, bool, 10.0, StoppingRule(ratio=1.1, max_steps=6))
    assert result.lo is not None and result.hi is not None
    assert result.lo <= capacity < result.hi and result.hi / result.lo <= 1.1
    assert capacity / 1.1 <= result.capacity <= capacity
    assert len(result.steps) == len(asked) <= 6
    assert "stop ratio" in result.stop_reason
    assert [step.holds for step in result.steps] == [load <= capacity for load in asked]
    assert result.steps[0].phase == "bracket" and result.steps[-1].phase == "bisect"


def test_search_bisects_at_the_geometric_midpoint():
    measure, asked = threshold(13.0)
    search_capacity(measure, bool, 4.0, StoppingRule(ratio=1.1, max_steps=10))
    assert asked[:3] == [4.0, 8.0, 16.0]
    assert asked[3] == pytest.approx(math.sqrt(8 * 16))


def test_concurrency_search_counts_whole_users_and_stops_when_none_lies_between():
    measure, asked = threshold(13)
    result = search_capacity(measure, bool, 8, StoppingRule(ratio=1.01, max_steps=10, lowest=1, integer=True))
    assert result.capacity == 13 and result.hi == 14
    assert all(load == int(load) for load in asked)
    assert result.stop_reason == "no whole number between 13 and 14"


def test_search_stops_at_the_limits_and_after_max_steps():
    measure, _ = threshold(1000.0)
    held = search_capacity(measure, bool, 10.0, StoppingRule(max_steps=10, highest=50.0))
    assert [s.load for s in held.steps] == [10.0, 20.0, 40.0, 50.0] and held.capacity == 50.0 and held.hi is None
    assert held.stop_reason == "every SLO held up to the highest load allowed (50)"
    broke = search_capacity(threshold(0.5)[0], bool, 10.0, StoppingRule(max_steps=10, lowest=2.0))
    assert [s.load for s in broke.steps] == [10.0, 5.0, 2.5, 2.0] and broke.capacity == 0.0 and broke.lo is None
    assert broke.stop_reason == "an SLO broke even at the lowest load allowed (2)"
    capped = search_capacity(measure, bool, 10.0, StoppingRule(max_steps=3))
    assert capped.capacity == 40.0 and capped.bracket_ratio is None and capped.stop_reason.startswith("maxSteps")


def test_a_measure_that_runs_out_of_time_ends_the_search_keeping_its_points():
    def measure(load: float) -> bool:
        if load > 20:
            raise StopSearch("time limit: 10 s left")
        return True

    result = search_capacity(measure, bool, 10.0, StoppingRule())
    assert result.stop_reason == "time limit: 10 s left" and result.capacity == 20.0 and len(result.steps) == 2


def test_next_load_names_why_the_search_is_over():
    rule = StoppingRule(ratio=1.2)
    assert next_load(None, None, 7.0, rule) == 7.0
    assert next_load(10.0, 11.0, 7.0, rule).startswith("bracket [10, 11] within the stop ratio")
    assert next_load(10.0, 40.0, 7.0, rule) == pytest.approx(20.0)


def test_points_are_judged_by_latency_and_error_slos_not_by_throughput_floors():
    slos = [slo for slo in parse_slos(load_environment("local").spec.acceptance.slos) if slo.check == "inference"]
    judged, not_judged = point_slos(slos, (*LOAD_METRICS, *RUN_METRICS))
    assert {slo.metric_name for slo in judged} >= {"error_rate", "p95_ttft_ms", "p95_tpot_ms", "goodput_fraction"}
    why = {entry["slo"].split()[0]: entry["why"] for entry in not_judged}
    assert why["inference.request_throughput"].startswith("a throughput floor") and "inference.output_throughput" in why
    assert why["inference.endpoint_compliance_failures"] == "not a figure of a load run"
    assert why["inference.capacity_rps"] == "not a figure of a load run"  # judged on the search's result
    # a ceiling on throughput is a limit like any other
    ceiling, = parse_slos({"inference.request_throughput": "< 1000"})
    assert point_slos([ceiling], RUN_METRICS + LOAD_METRICS)[0] == [ceiling]


def test_a_point_holds_only_when_every_verdict_passes_and_nothing_was_abandoned():
    point = LoadPoint("rate", 8.0)
    passing = SloResult("inference.p95_ttft_ms", "< 500", "pass", 120.0)
    failing = SloResult("inference.error_rate", "< 0.01", "fail", 0.2, "0.2 is not < 0.01")
    assert PointOutcome(point, [passing], {}).holds
    assert not PointOutcome(point, [passing, failing], {}).holds
    abandoned = PointOutcome(point, [passing], {}, ["3 requests still unanswered 2 s after the window"])
    assert not abandoned.holds and abandoned.broken() == ["3 requests still unanswered 2 s after the window"]
    assert PointOutcome(point, [failing], {}).to_dict()["broken"] == ["inference.error_rate 0.2 is not < 0.01"]
    assert PointOutcome(LoadPoint("concurrency", 4), [], {}).to_dict()["load"] == "4 users"


@pytest.mark.parametrize("settings, message", [
    ({}, "give `sweep`, `search` or both"),
    ({"sweep": {}}, "a sweep needs `rates`, `concurrencies` or both"),
    ({"sweep": {"rates": [4, -1]}}, "greater than 0"),
    ({"sweep": {"concurrencies": [2.5]}}, "integer"),
    ({"pointDurationS": 2, "sweep": {"rates": [2, 8]}}, "rates 2 req/s give fewer than 10 requests"),
    ({"search": {"stopRatio": 1}}, "greater than 1"),
    ({"pointDurationS": 4, "search": {"lowest": 2}}, "lowest 2 req/s gives fewer than 10 requests"),
    ({"search": {"mode": "concurrency", "start": 2.5}}, "start must be whole numbers"),
    ({"search": {"lowest": 8, "highest": 4}}, "lowest (8) must be below highest (4)"),
    ({"search": {"mode": "tokens"}}, "'rate' or 'concurrency'"),
])
def test_malformed_capacity_settings_are_refused(settings, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        CapacitySettings.model_validate(settings)


def test_a_malformed_sweep_setting_is_one_line_naming_the_key_and_exit_2(env_file):
    bad_sweep = "sweep: {rates: [8, fast]}\n          search: {mode: rate"
    path = env_file("local", replace={"search: {mode: rate": bad_sweep})
    completed = subprocess.run([sys.executable, "-m", "dcforge.cli", "validate", "--env-file", str(path)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stderr
    line, = completed.stderr.strip().splitlines()
    assert "dcforge:acceptance.settings.inference.capacity.sweep.rates.1" in line and "number" in line, line


def test_a_concurrency_search_reports_its_users_and_the_rate_served_there():
    from dcforge.checks.inference import InferenceCheck
    from dcforge.steps.serving.capacity import CapacityReport
    from dcforge.harness.result import CheckResult

    def outcome(users: float) -> PointOutcome:
        verdict = "pass" if users <= 13 else "fail"
        verdicts = [SloResult("inference.p95_ttft_ms", "< 500", verdict, 40.0 * users)]
        return PointOutcome(LoadPoint("concurrency", users), verdicts, {"request_throughput": 3.0 * users})

    settings = CapacitySettings.model_validate({"search": {"mode": "concurrency"}})
    rule = StoppingRule(ratio=1.1, max_steps=8, lowest=1, integer=True)
    search = search_capacity(outcome, lambda point: point.holds, 8, rule)
    report = CapacityReport(settings, ["inference.p95_ttft_ms < 500"], [], {}, "", search, 8, rule, 1.0)
    result = CheckResult("inference", declared=InferenceCheck.metrics)
    report.report(result)
    assert result.metrics["capacity_concurrency"].value == 13
    assert result.metrics["capacity_rps"].value == 39.0
    assert "served at 13 users" in result.metrics["capacity_rps"].formula
    assert result.metrics["capacity_bracket_ratio"].value == pytest.approx(14 / 13)
    points = result.details["capacity"]["search"]["points"]
    assert [p["users"] for p in points] == [step.load for step in search.steps] and points[0]["load"] == "8 users"
    tried, = [plot for plot in result.plots if plot.title == "Capacity search: every point tried"]
    assert sorted(tried.series[0].y + tried.series[1].y) == sorted(step.load for step in search.steps)
