"""The metric catalogue: every check declares what it reports, results take their entries from the declarations,
`dcforge metrics` prints them, docs/metrics.md's table is generated from them and the report carries them."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcforge.checks import CHECKS, load_check
from dcforge.steps.serving.load_metrics import LOAD_METRICS
from dcforge.steps.serving.summary import add_summary_metrics
from dcforge.harness.metrics import MetricSpec, UndeclaredMetric, find_spec
from dcforge.harness.result import CheckResult
from dcforge.metrics_catalogue import METRICS_DOC, TABLE_BEGIN, TABLE_END, catalogue, render_markdown, table_section
from dcforge.report.html import render_html
from dcforge.paths import REPO_ROOT
from loadtests.metrics import LATENCY_STATS, RequestSlo, summarize
from workloads.records import RequestRecord

CHECKS_DIR = REPO_ROOT / "dcforge" / "checks"
SERVING_CHECKS = ("inference", "inference_failover")
"""Checks whose results the `serving` package adds metrics to (serving_session, add_summary_metrics, ...)."""
SERVING_MODULES_OF_ONE_CHECK = {"capacity.py": ["inference"], "server_metrics.py": ["inference"]}
"""`serving` modules that only one of the serving checks uses (the capacity step belongs to `inference`)."""


def _check_of_module() -> dict[str, list[str]]:
    """Check module file name -> the checks whose results its add_metric calls fill."""
    owners: dict[str, list[str]] = {}
    for name, target in CHECKS.items():
        owners.setdefault(target.split(":")[0].rsplit(".", 1)[1] + ".py", []).append(name)
    for module in sorted((CHECKS_DIR / "serving").glob("*.py")):
        owners[f"serving/{module.name}"] = SERVING_MODULES_OF_ONE_CHECK.get(module.name, list(SERVING_CHECKS))
    return owners


def _loop_values(tree: ast.AST, variable: str) -> list[str] | None:
    """The string constants a `for <variable> in (...)` loop iterates over, if there is such a loop."""
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == variable \
                and isinstance(node.iter, (ast.Tuple, ast.List)) \
                and all(isinstance(e, ast.Constant) for e in node.iter.elts):
            return [e.value for e in node.iter.elts]
    return None


def _emitted_keys(path: Path) -> tuple[list[str], list[str], list[int]]:
    """(literal keys, f-string patterns, line numbers of keys this scan cannot resolve) of add_metric calls."""
    tree = ast.parse(path.read_text())
    literal, patterns, unresolved = [], [], []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_metric" and node.args):
            continue
        key = node.args[0]
        if isinstance(key, ast.Constant):
            literal.append(key.value)
        elif isinstance(key, ast.JoinedStr):
            patterns.append("".join(re.escape(part.value) if isinstance(part, ast.Constant) else ".+"
                                    for part in key.values))
        elif isinstance(key, ast.Name) and (values := _loop_values(tree, key.id)) is not None:
            literal.extend(values)
        else:
            unresolved.append(node.lineno)
    return literal, patterns, unresolved


def _declared_keys(check: str) -> set[str]:
    return {key for spec in load_check(check).metrics for key in spec.keys}


def test_every_check_declares_its_metrics_with_unit_direction_formula_and_meaning():
    for name in CHECKS:
        specs = load_check(name).metrics
        assert specs, f"{name} declares no metrics"
        keys = [key for spec in specs for key in spec.keys]
        assert len(keys) == len(set(keys)), f"{name} declares a key twice: {sorted(keys)}"
        for spec in specs:
            assert isinstance(spec, MetricSpec)
            assert spec.better in ("higher", "lower", None), (name, spec.name)
            assert spec.formula.strip() and spec.meaning.strip(), f"{name}.{spec.name} lacks formula or meaning"
            # a name, or one per storage class: `<class>.seq_write_gbps` (the storage check fills in its classes)
            assert re.fullmatch(r"(<class>\.)?[a-z][a-z0-9_]*", spec.name), spec.name
            assert all(re.fullmatch(r"[a-z0-9]+", stat) for stat in spec.stats), spec.stats


def test_every_metric_key_a_check_module_emits_is_declared_by_its_check():
    """A static scan of every add_metric call in dcforge/checks: each key is declared by the check it reports to.
    The one call whose keys are data (add_summary_metrics) is covered by the next test."""
    for module, checks in _check_of_module().items():
        literal, patterns, unresolved = _emitted_keys(CHECKS_DIR / module)
        if module == "serving/summary.py":
            assert len(unresolved) == 1, "add_summary_metrics is the only data-driven add_metric call"
        else:
            assert not unresolved, f"{module}: add_metric keys at lines {unresolved} cannot be checked statically"
        for check in checks:
            declared = _declared_keys(check)
            missing = sorted(set(literal) - declared)
            assert not missing, f"{module} reports {missing} for {check}, which does not declare them"
            for pattern in patterns:
                assert any(re.fullmatch(pattern, key) for key in declared), f"{module}: {pattern} undeclared"


def _records(count: int = 20) -> list[RequestRecord]:
    records = []
    for i in range(count):
        ok = i % 10 != 9
        records.append(RequestRecord(start=100.0 + i * 0.1, end=100.5 + i * 0.1, ok=ok, e2e_s=0.5,
                                     ttft_s=0.1 if ok else None, output_tokens=8 if ok else 0, prompt_tokens=16,
                                     token_times_s=[0.1, 0.2, 0.3] if ok else [], error="" if ok else "HTTP 503"))
    return records


@pytest.mark.parametrize("check", SERVING_CHECKS)
def test_load_summary_reports_exactly_the_declared_load_metrics(check):
    result = CheckResult(check, declared=load_check(check).metrics)
    add_summary_metrics(result, summarize(_records(), RequestSlo(ttft_ms=200)))
    load_keys = {key for spec in LOAD_METRICS for key in spec.keys} - {"replicas_ready_s", "warmup_requests"}
    assert set(result.metrics) == load_keys  # nothing undeclared, and no declared load metric left unmeasured
    assert set(summarize(_records())) == set(result.metrics)
    assert result.metrics["p95_ttft_ms"].value == pytest.approx(100) and result.metrics["error_rate"].value == 0.1
    assert result.metrics["p95_ttft_ms"].aliases == {"aiperf": "time_to_first_token.p95",
                                                     "dcforge (former)": "ttft_ms.p95"}
    assert result.metrics["mean_ttft_ms"].aliases["aiperf"] == "time_to_first_token.avg"
    assert result.metrics["request_throughput"].aliases == {"aiperf": "request_throughput", "dcforge (former)": "rps"}


def test_a_result_takes_unit_direction_formula_and_meaning_from_the_declaration():
    check = load_check("inference")
    result = CheckResult("inference", declared=check.metrics)
    result.add_metric("p95_ttft_ms", 123.0)
    spec = find_spec(check.metrics, "p95_ttft_ms")
    metric = result.metrics["p95_ttft_ms"]
    assert (metric.value, metric.unit, metric.better, metric.formula, metric.meaning) == \
        (123.0, "ms", "lower", spec.formula, spec.meaning)
    failover = CheckResult("inference_failover", declared=load_check("inference_failover").metrics)
    failover.add_metric("ttr_s", 1.5, context="K=3")
    assert failover.metrics["ttr_s"].formula.endswith("t_kill (K=3)")
    assert "declared" not in result.to_dict()
    assert CheckResult.from_dict(result.to_dict()).metrics == result.metrics


def test_reporting_an_undeclared_metric_is_a_programming_error():
    result = CheckResult("inference", declared=load_check("inference").metrics)
    with pytest.raises(UndeclaredMetric, match="'p75_ttft_ms'.*does not list"):
        result.add_metric("p75_ttft_ms", 1.0)  # a statistic the declaration does not name
    with pytest.raises(UndeclaredMetric, match="'ttft_ms.p95'"):
        result.add_metric("ttft_ms.p95", 1.0)  # an alias is never reported
    with pytest.raises(UndeclaredMetric, match="'tokens_per_s'"):
        CheckResult("system", declared=load_check("system").metrics).add_metric("tokens_per_s", 1.0)
    assert not result.metrics


def test_reports_written_before_meanings_existed_still_load():
    old = {"name": "train", "status": "pass", "metrics": {"mfu": {"value": 0.4, "unit": "ratio", "better": "higher",
                                                                  "formula": "MFU = ..."}}}
    assert CheckResult.from_dict(old).metrics["mfu"].meaning == ""


def test_every_check_has_a_section_in_the_metric_definitions():
    headings = set(re.findall(r"^## (\S+)$", (REPO_ROOT / "docs" / "metrics.md").read_text(), flags=re.MULTILINE))
    assert set(CHECKS) <= headings, f"docs/metrics.md lacks sections {sorted(set(CHECKS) - headings)}"
    assert all(entry.to_dict()["definition"] == f"docs/metrics.md#{entry.check}" for entry in catalogue())


def test_the_metric_table_of_docs_metrics_md_is_generated_from_the_declarations():
    section = table_section(METRICS_DOC.read_text())
    assert section is not None, f"docs/metrics.md lacks the markers {TABLE_BEGIN!r} ... {TABLE_END!r}"
    assert section == render_markdown(catalogue(), in_metrics_doc=True), (
        "docs/metrics.md's metric table differs from the checks' declarations; regenerate it with "
        "`.venv/bin/python -m dcforge.metrics_catalogue`")
    assert f"](#{catalogue()[0].check})" in section  # links to its own sections, not to docs/docs/metrics.md


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", "metrics", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)


def test_metrics_command_json_lists_every_declared_metric():
    proc = _cli("--format", "json")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert len(entries) == sum(len(load_check(name).metrics) for name in CHECKS)
    by_key = {(e["key"], tuple(e["stats"])): e for e in entries}
    ttft = by_key[("inference.ttft_ms", LATENCY_STATS)]
    assert ttft["unit"] == "ms" and ttft["direction"] == "lower" and "inference.p95_ttft_ms" in ttft["slo_keys"]
    assert ttft["aliases"]["p99_ttft_ms"] == {"aiperf": "time_to_first_token.p99", "dcforge (former)": "ttft_ms.p99"}
    assert ttft["formula"] and ttft["meaning"] and ttft["definition"] == "docs/metrics.md#inference"
    assert {e["check"] for e in entries} == set(CHECKS)
    assert by_key[("system.cpu_count", ())]["direction"] == "none"


def test_metrics_command_filters_by_check_and_prints_markdown_and_table():
    proc = _cli("--check", "train", "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render_markdown(catalogue("train")) and "train.tokens_per_s" in proc.stdout
    assert "inference." not in proc.stdout
    table = _cli("--check", "allreduce")
    assert table.returncode == 0 and "allreduce.busbw_gbps" in table.stdout


@pytest.mark.parametrize("args, expected", [
    (("--check", "nosuch"), "error: --check: unknown check 'nosuch'; known: system, "),
    (("--format", "yaml"), "error: --format: unknown format 'yaml'; known: table, json, markdown"),
])
def test_metrics_command_bad_input_is_one_line_and_exit_2(args, expected):
    proc = _cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr


def test_html_report_links_every_slo_to_its_metric_definition():
    result = CheckResult("inference", declared=load_check("inference").metrics)
    result.add_metric("p95_ttft_ms", 120.0)
    report = {"metadata": {"environment": "local"}, "status": "pass", "checks": [result.to_dict()],
              "slos": [{"metric": "inference.p95_ttft_ms", "expression": "< 500", "verdict": "pass", "value": 120.0,
                        "reason": ""}]}
    page = render_html(report)
    spec = find_spec(load_check("inference").metrics, "p95_ttft_ms")
    row = re.search(r"<tr id='metric-inference\.p95_ttft_ms' title='([^']*)'>", page)
    assert row and spec.formula.replace(">", "&gt;") in row.group(1) and spec.meaning in page
    link = re.search(r"<a href='#metric-inference\.p95_ttft_ms' title='([^']*)'><code>inference\.p95_ttft_ms",
                     page)
    assert link and link.group(1) == row.group(1)
    assert "docs/metrics.md" in page
    assert "aiperf: <code>time_to_first_token.p95</code>" in page  # the aliases report.json carries


def test_html_report_defines_an_slo_metric_that_a_skipped_check_did_not_produce():
    report = {"metadata": {"environment": "local"}, "status": "pass",
              "checks": [{"name": "train", "status": "skipped", "reason": "no GPU", "metrics": {}}],
              "slos": [{"metric": "train.tokens_per_s", "expression": ">= 2000", "verdict": "skipped", "value": None,
                        "reason": "check 'train' was skipped"}]}
    spec = find_spec(load_check("train").metrics, "tokens_per_s")
    tooltip = re.search(r"<span title='([^']*)'><code>train\.tokens_per_s</code>", render_html(report))
    assert tooltip and spec.meaning in tooltip.group(1)


def test_the_repository_cites_no_design_document_outside_it():
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot list the repository's files")
    outside = "DESIGN" + ".md"  # spelled in two parts so this file does not cite it either
    citing = []
    for name in listed.stdout.splitlines():
        path = REPO_ROOT / name
        if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".yml", ".j2", ".toml", ".txt", ".cfg", ""}:
            if outside in path.read_text(errors="replace"):
                citing.append(name)
    assert not citing, f"files citing {outside}, which is not in the repository: {citing}"
