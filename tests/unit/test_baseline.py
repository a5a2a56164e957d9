"""Baseline comparison: direction-aware, 5% tolerance, errors/skips ignored, bad baseline files refused."""

from __future__ import annotations

import json

import pytest

from dcforge.errors import ConfigError
from dcforge.report.baseline import compare, load_baseline


def report(**metrics) -> dict:
    checks: dict[str, dict] = {}
    for key, (value, better) in metrics.items():
        check, name = key.split("__", 1)
        checks.setdefault(check, {"name": check, "status": "pass", "metrics": {}})
        checks[check]["metrics"][name] = {"value": value, "unit": "", "better": better, "formula": ""}
    return {"schema": "dcforge.report/v1", "checks": list(checks.values())}


@pytest.mark.parametrize("better, before, after, regressed", [
    ("higher", 1000, 949, True), ("higher", 1000, 951, False), ("higher", 1000, 2000, False),
    ("lower", 100, 105.1, True), ("lower", 100, 104.9, False), ("lower", 100, 50, False),
    ("higher", -10, -10.6, True), ("lower", 0, 1, True), ("lower", 0, 0, False),
])
def test_direction_aware_threshold(better, before, after, regressed):
    (comparison,) = compare(report(train__x=(after, better)), report(train__x=(before, better)))
    assert comparison.regressed is regressed
    assert comparison.metric == "train.x"


def test_informational_and_unmatched_metrics_are_not_compared():
    current = report(system__cpu_count=(2, None), train__new=(1, "higher"))
    baseline = report(system__cpu_count=(64, None), train__old=(1, "higher"))
    assert compare(current, baseline) == []


def test_metrics_of_errored_checks_are_ignored():
    current = report(train__x=(1, "higher"))
    current["checks"][0]["status"] = "error"
    assert compare(current, report(train__x=(100, "higher"))) == []


def test_custom_tolerance():
    (comparison,) = compare(report(a__x=(90, "higher")), report(a__x=(100, "higher")), tolerance=0.2)
    assert not comparison.regressed and comparison.change == pytest.approx(-0.1)


@pytest.mark.parametrize("content, words", [("{not json", "not JSON"), ('{"schema": "other"}', "not a dcforge"),
                                            ("[]", "not a dcforge")])
def test_bad_baseline_files(tmp_path, content, words):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        load_baseline(path)


def test_missing_baseline_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read baseline"):
        load_baseline(tmp_path / "nope.json")


def test_roundtrip_through_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report(train__x=(1, "higher"))))
    assert load_baseline(path)["checks"][0]["name"] == "train"


def test_a_baseline_from_before_a_rename_is_compared_under_the_former_name():
    from dcforge.checks import load_check
    from dcforge.harness.result import CheckResult

    result = CheckResult("inference", declared=load_check("inference").metrics)
    result.add_metric("p95_ttft_ms", 300.0)
    result.add_metric("request_throughput", 5.0)
    current = {"schema": "dcforge.report/v1", "checks": [result.to_dict()]}
    baseline = report(inference__ttft_ms__p95=(100.0, "lower"), inference__rps=(5.0, "higher"))
    for check in baseline["checks"]:  # report() splits at the first "__"; the former key is "ttft_ms.p95"
        check["metrics"] = {name.replace("__", "."): metric for name, metric in check["metrics"].items()}
    by_metric = {c.metric: c for c in compare(current, baseline)}
    assert set(by_metric) == {"inference.p95_ttft_ms", "inference.request_throughput"}
    assert by_metric["inference.p95_ttft_ms"].baseline == 100.0 and by_metric["inference.p95_ttft_ms"].regressed
