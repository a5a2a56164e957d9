"""`repeats: N`: each figure's mean and Student-t 95 % interval (docs/metrics.md#repeats), SLOs on a bound, and
the settings and SLO keys refused with one line."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest
from pydantic import ValidationError

from dcforge.checks.inference import InferenceCheck, InferenceConfig
from dcforge.harness.repeats import add_repeat_statistics, mean_ci95, t_critical
from dcforge.harness.result import CheckResult
from dcforge.harness.slo import evaluate, parse_slo


@pytest.mark.parametrize("dof, published", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452),
                                            (120, 1.9799)])
def test_t_critical_matches_the_published_table(dof, published):
    # two-sided 95 % values of Student's t (NIST/SEMATECH e-Handbook, table 1.3.6.7.2, upper 0.025 point)
    assert t_critical(dof) == pytest.approx(published, abs=5e-4)


def test_interval_is_mean_plus_minus_t_s_over_root_n():
    values = [100.0, 110.0, 96.0, 104.0, 120.0]
    interval = mean_ci95(values)
    half = 2.7764 * statistics.stdev(values) / math.sqrt(5)
    assert interval.mean == pytest.approx(106.0)
    assert (interval.low, interval.high) == pytest.approx((106.0 - half, 106.0 + half), abs=1e-2)
    assert mean_ci95([7.0, 7.0, 7.0]) == pytest.approx(type(interval)(7.0, 7.0, 7.0))
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_ci95([1.0])


def _run(ttft: float, saturation: str = "not saturated", extra: dict | None = None) -> CheckResult:
    result = CheckResult("inference", declared=InferenceCheck.metrics)
    result.add_metric("p95_ttft_ms", ttft)
    result.add_metric("request_throughput", 10.0)
    for key, value in (extra or {}).items():
        result.add_metric(key, value)
    result.details["client_saturation"] = saturation
    return result


def test_repeats_report_mean_bounds_and_per_repeat_values_and_an_slo_judges_the_bound():
    first = _run(400.0, extra={"decode_batch_mean": 3.0})
    third = _run(600.0, saturation="cpu 0.97 core")
    third.artefacts["request_log"] = "artefacts/inference/repeat-3/requests.jsonl"
    add_repeat_statistics(first, [_run(500.0), third], per_repeat_details=("client_saturation",))
    assert first.artefacts == {"request_log_repeat_3": "artefacts/inference/repeat-3/requests.jsonl"}
    half = 4.3027 * 100.0 / math.sqrt(3)
    assert first.metrics["p95_ttft_ms"].value == pytest.approx(500.0)
    assert first.metrics["p95_ttft_ms.ci95_high"].value == pytest.approx(500.0 + half, abs=0.05)
    assert first.metrics["p95_ttft_ms.ci95_low"].value == pytest.approx(500.0 - half, abs=0.05)
    assert first.metrics["p95_ttft_ms.ci95_high"].unit == "ms" and first.metrics["p95_ttft_ms.ci95_high"].better == \
        "lower"
    assert first.metrics["p95_ttft_ms.ci95_high"].aliases["aiperf"] == "time_to_first_token.p95.ci95_high"
    assert "mean of 3 repeats" in first.metrics["p95_ttft_ms"].formula
    assert first.metrics["request_throughput.ci95_high"].value == pytest.approx(10.0)  # identical: zero width
    repeats = first.details["repeats"]
    assert repeats["count"] == 3 and repeats["values"]["p95_ttft_ms"] == [400.0, 500.0, 600.0]
    assert repeats["not_in_every_repeat"] == ["decode_batch_mean"] and "decode_batch_mean.ci95_high" not in \
        first.metrics
    assert repeats["client_saturation"] == ["not saturated", "not saturated", "cpu 0.97 core"]
    results = {"inference": first}
    judged = evaluate(parse_slo("inference.p95_ttft_ms.ci95_high", "< 700"), results)
    assert judged.verdict == "fail" and judged.value == pytest.approx(748.4, abs=0.1)
    assert evaluate(parse_slo("inference.p95_ttft_ms", "< 700"), results).verdict == "pass"  # the mean
    assert evaluate(parse_slo("inference.p95_ttft_ms.ci95_low", "< 700"), results).verdict == "pass"


def test_one_measurement_reports_no_bound_and_an_slo_on_it_is_an_error():
    single = _run(400.0)
    add_repeat_statistics(single, [])
    assert set(single.metrics) == {"p95_ttft_ms", "request_throughput"} and "repeats" not in single.details
    assert evaluate(parse_slo("inference.p95_ttft_ms.ci95_high", "< 1000"), {"inference": single}).verdict == "error"


def test_repeats_default_to_one_and_are_bounded():
    assert InferenceConfig().repeats == 1
    assert InferenceConfig.model_validate({"repeats": 3}).repeats == 3
    for bad in (0, 21, "many"):
        with pytest.raises(ValidationError):
            InferenceConfig.model_validate({"repeats": bad})


GOODPUT = 'goodput: "ttft:1000 tpot:150"  # vLLM\'s --goodput: per-request limits of goodput'
"""A line of the inference settings in stacks/Pulumi.local.yaml, to add a setting after."""


def _validate(env_file, replace: dict[str, str]) -> subprocess.CompletedProcess:
    path = env_file("local", replace=replace)
    return subprocess.run([sys.executable, "-m", "dcforge.cli", "validate", "--env-file", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_a_bound_slo_needs_repeats_and_bad_repeats_are_one_line(env_file):
    bound = {"inference.p95_ttft_ms:": "inference.p95_ttft_ms.ci95_high:"}
    proc = _validate(env_file, bound)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "dcforge:acceptance.slos.inference.p95_ttft_ms.ci95_high" in line
    assert "needs dcforge:acceptance.settings.inference.repeats >= 2" in line
    proc = _validate(env_file, {**bound, GOODPUT: f"{GOODPUT}\n        repeats: 3"})
    assert proc.returncode == 0, proc.stderr
    proc = _validate(env_file, {GOODPUT: f"{GOODPUT}\n        repeats: 0"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "dcforge:acceptance.settings.inference.repeats" in line
