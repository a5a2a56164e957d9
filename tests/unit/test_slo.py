"""SLO expressions: every operator, number forms, bad syntax, missing metrics, skipped and errored checks."""

from __future__ import annotations

import math

import pytest

from dcforge.checks.inference import InferenceCheck
from dcforge.harness.result import CheckResult, Status
from dcforge.harness.slo import SloSyntaxError, evaluate, parse_slo, parse_slos


@pytest.mark.parametrize("expression, value, holds", [
    ("< 500", 499.9, True), ("< 500", 500, False),
    ("<= 500", 500, True), ("<= 500", 500.1, False),
    ("> 2000", 2000.5, True), ("> 2000", 2000, False),
    (">= 2000", 2000, True), (">= 2000", 1999.99, False),
    ("== 0", 0, True), ("== 0", 1e-12, False),
    ("!= 0", 1, True), ("!= 0", 0, False),
    ("< 1e-3", 0.0009, True), ("< 1e-3", 0.001, False),
    (">=1_000", 1000, True), ("  <  .5 ", 0.4, True), ("> -5", -4, True), ("< +5", 4, True),
])
def test_operators_and_number_forms(expression, value, holds):
    assert parse_slo("train.tokens_per_s", expression).holds(value) is holds


def test_nan_never_holds():
    assert not parse_slo("a.b", "!= 0").holds(math.nan)


@pytest.mark.parametrize("expression", ["500", "=< 500", "< five hundred", "<", "", "< 5 ms", "=> 3", "<< 3",
                                        "< 1e", "≥ 3"])
def test_bad_expressions_are_refused(expression):
    with pytest.raises(SloSyntaxError, match="bad SLO expression"):
        parse_slo("a.b", expression)


def test_non_string_expression_is_refused():
    with pytest.raises(SloSyntaxError, match="expected a string"):
        parse_slo("a.b", 500)  # type: ignore[arg-type]


def test_lists_must_all_hold():
    slos = parse_slos({"inference.p95_ttft_ms": ["> 0", "< 500"]})
    assert [s.expression for s in slos] == ["> 0", "< 500"]
    assert slos[0].check == "inference" and slos[0].metric_name == "p95_ttft_ms"


def _result(status=Status.PASS, **metrics) -> dict[str, CheckResult]:
    result = CheckResult("inference", status=status, reason="why" if status != Status.PASS else "",
                         declared=InferenceCheck.metrics)
    for name, value in metrics.items():
        result.add_metric(name, value)
    return {"inference": result}


def test_evaluate_pass_and_fail_carry_value_and_reason():
    slo = parse_slo("inference.p95_ttft_ms", "< 500")
    passed = evaluate(slo, _result(p95_ttft_ms=120))
    assert (passed.verdict, passed.value, passed.reason) == ("pass", 120, "")
    failed = evaluate(slo, _result(p95_ttft_ms=800))
    assert failed.verdict == "fail" and "800 ms is not < 500" in failed.reason


def test_missing_metric_is_an_error_naming_what_exists():
    verdict = evaluate(parse_slo("inference.p99_ttft_ms", "< 500"), _result(p95_ttft_ms=1))
    assert verdict.verdict == "error"
    assert "produced no metric 'p99_ttft_ms'" in verdict.reason and "p95_ttft_ms" in verdict.reason


def test_errored_check_makes_its_slos_errors_not_passes():
    verdict = evaluate(parse_slo("inference.p95_ttft_ms", "< 500"), _result(Status.ERROR))
    assert verdict.verdict == "error" and "errored" in verdict.reason


def test_skipped_check_makes_its_slos_skipped_never_passed():
    verdict = evaluate(parse_slo("inference.p95_ttft_ms", "< 500"), _result(Status.SKIPPED, p95_ttft_ms=1))
    assert verdict.verdict == "skipped" and "skipped" in verdict.reason


def test_check_that_did_not_run_is_skipped():
    assert evaluate(parse_slo("train.tokens_per_s", "> 1"), {}).verdict == "skipped"
