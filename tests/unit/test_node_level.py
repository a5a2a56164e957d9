"""`node_level`: which nodes are sampled, the pool's min and median per figure, outliers naming their figures, the
node table in report.json, HTML and JUnit, and one node's steps through a real local executor."""

from __future__ import annotations

import os
import threading
import time
import xml.etree.ElementTree as ET

import pytest
from pydantic import ValidationError

from dcforge.checks.node_level import (NodeLevelCheck, NodeLevelConfig, NodeTrainConfig, mark_outliers, pool_summary,
                                       sample_indices, shared_threads)
from dcforge.checks.system import SystemCheck
from dcforge.executors.local import LocalExecutor
from dcforge.harness.result import CheckResult, Status
from dcforge.report.html import render_html
from dcforge.report.junit import junit_xml
from dcforge.placement.nodes import OpenExecutions, run_node
from dcforge.report.nodes import node_problem
from dcforge.steps.step import Step
from dcforge.steps.system import record_facts
from dcforge.steps.train import train_step
from workloads.records import SYSTEM_FACTS_FILE, SystemFacts, read_result


def rows() -> list[dict]:
    return [{"host": "gpu-01", "state": "succeeded", "tokens_per_s": 1000.0, "save_gbps": 2.0},
            {"host": "gpu-02", "state": "succeeded", "tokens_per_s": 950.0, "save_gbps": 1.0},
            {"host": "gpu-03", "state": "succeeded", "tokens_per_s": 700.0, "save_gbps": 2.1},
            {"host": "gpu-04", "state": "failed", "reason": "train failed (exit 1)", "save_gbps": 2.2}]


def test_a_sample_is_spread_evenly_over_the_inventory_and_the_same_every_time():
    assert sample_indices(10, 3) == [0, 3, 6]
    assert sample_indices(64, 4) == [0, 16, 32, 48]
    assert sample_indices(5, None) == sample_indices(5, 5) == sample_indices(5, 9) == [0, 1, 2, 3, 4]
    assert sample_indices(7, 1) == [0]


def test_pool_summary_is_min_with_its_host_and_median_over_nodes_that_have_the_figure():
    assert pool_summary(rows(), "tokens_per_s") == (700.0, "gpu-03", 950.0)  # gpu-04 has no train figure
    assert pool_summary(rows(), "save_gbps") == (1.0, "gpu-02", 2.05)
    assert pool_summary(rows(), "busbw_gbps") is None


def test_a_node_below_the_pool_median_by_more_than_the_fraction_is_an_outlier_in_that_figure():
    table = rows()
    named = mark_outliers(table, ("tokens_per_s", "save_gbps"), 0.2)
    assert [row["host"] for row in named] == ["gpu-02", "gpu-03"]
    assert [(row["outlier"], row["outlier_in"]) for row in table] == [
        (False, []), (True, ["save_gbps"]), (True, ["tokens_per_s"]), (False, [])]
    assert node_problem(table[2]) == \
        "gpu-03: outlier in tokens_per_s, more than the configured fraction below the pool median"
    # 700 is 0.74 of the median: within a fraction of 0.3
    assert [row["host"] for row in mark_outliers(rows(), ("tokens_per_s",), 0.3)] == []


def recorded(table: list[dict], fraction: float = 0.2) -> CheckResult:
    result = CheckResult("node_level", declared=NodeLevelCheck.metrics)
    NodeLevelCheck._record(result, table, NodeLevelConfig(outlier_fraction=fraction))
    return result


def test_metrics_are_the_pool_statistics_and_outliers_and_failed_nodes_fail_the_check():
    result = recorded(rows())
    metrics = {key: metric.value for key, metric in result.metrics.items()}
    assert metrics == {"nodes": 4, "nodes_failed": 1, "outliers": 2, "tokens_per_s.min": 700.0,
                       "tokens_per_s.median": 950.0, "save_gbps.min": 1.0, "save_gbps.median": 2.05}
    assert result.metrics["tokens_per_s.min"].formula.endswith("(gpu-03)")  # the SLO on .min names its node
    assert result.status is Status.FAIL
    assert result.reason == ("failed nodes: gpu-04: failed: train failed (exit 1); outliers: gpu-02 (save_gbps 1, "
                             "median 2.05); gpu-03 (tokens_per_s 700, median 950)")


def test_a_pool_of_equal_nodes_passes():
    result = recorded([{"host": f"h{i}", "state": "succeeded", "tokens_per_s": 100.0 + i} for i in range(3)])
    assert result.status is Status.PASS and result.metrics["outliers"].value == 0


def test_report_html_and_junit_show_the_node_table_with_the_outlier_figure_highlighted():
    check = recorded(rows()).to_dict()
    report = {"metadata": {"environment": "hosts", "started_at": "2026-01-01T00:00:00Z"}, "status": "fail",
              "slos": [], "checks": [check]}
    page = render_html(report)
    assert "<table class='nodes'>" in page and "<th>outlier_in</th>" in page
    (gpu03,) = [line for line in page.splitlines() if "<td>gpu-03</td>" in line]
    assert gpu03.startswith("<tr class=outlier") and "<td class=outlier-figure>700</td>" in gpu03
    assert "<td>tokens_per_s</td>" in gpu03  # the list of figures, readable
    (gpu01,) = [line for line in page.splitlines() if "<td>gpu-01</td>" in line]
    assert not gpu01.startswith("<tr class=outlier") and "outlier-figure" not in gpu01
    suites = ET.fromstring(junit_xml(report).split("\n", 1)[1])
    cases = {case.get("name"): case for case in next(s for s in suites if s.get("name") == "dcforge.nodes.hosts")}
    assert list(cases) == [f"node_level gpu-0{i}" for i in range(1, 5)]
    assert cases["node_level gpu-03"].find("failure").get("message").startswith("gpu-03: outlier in tokens_per_s")
    assert cases["node_level gpu-01"].find("failure") is None


def test_settings_nest_the_single_node_checks_settings_with_small_defaults():
    config = NodeLevelConfig.model_validate({"sample": 2, "outlierFraction": 0.3, "workloads": ["system", "train"],
                                             "train": {"steps": 4}, "checkpoint": {"withOptimizer": False}})
    assert (config.sample, config.outlier_fraction, config.workloads) == (2, 0.3, ["system", "train"])
    assert (config.train.steps, config.train.seq_len, config.train.preset) == (4, 64, "tiny")
    assert (config.checkpoint.preset, config.checkpoint.rounds, config.checkpoint.with_optimizer) == ("tiny", 1, False)
    assert (config.allreduce.max_bytes, config.outlier_fraction) == ("1M", 0.3)
    with pytest.raises(ValidationError, match="workloads"):
        NodeLevelConfig.model_validate({"workloads": ["train", "gpu_burn"]})
    with pytest.raises(ValidationError, match="at most once"):
        NodeLevelConfig.model_validate({"workloads": ["train", "train"]})
    with pytest.raises(ValidationError, match="stpes"):
        NodeLevelConfig.model_validate({"train": {"stpes": 4}})


FACTS_SCRIPT = ("import sys; from workloads.records import SystemFacts, emit_result; emit_result(SystemFacts("
                "hostname='n', cpu_count=3, memory_gi=1.5, cpu_model='m', kernel='k', os='o', python='3', "
                "versions=dict(), gpus=[]), sys.argv[1])")  # no braces: commands are executor templates


def judge_facts(data: bytes) -> CheckResult:
    judged = CheckResult("system", declared=SystemCheck.metrics)
    record_facts(judged, read_result(data.decode().splitlines(), SystemFacts))
    return judged


@pytest.mark.timeout(60)
def test_a_failed_step_fails_the_node_and_the_next_steps_still_report(tmp_path):
    steps = [Step("train", ("sh", "-c", "exit 3"), "metrics.jsonl", judge_facts),
             Step("system", ("{python}", "-c", FACTS_SCRIPT, f"{{volume[results]}}/{SYSTEM_FACTS_FILE}"),
                  SYSTEM_FACTS_FILE, judge_facts)]
    lines: list[str] = []
    row = run_node("local-0", LocalExecutor(grace_s=1), steps, tmp_path, OpenExecutions(), lambda: 30.0,
                   lines.append)
    assert row == {"host": "local-0", "state": "failed", "exit_code": 3, "reason": "train failed",
                   "cpu_count": 3.0, "memory_gi": 1.5, "gpu_count": 0.0}
    assert lines == ["local-0: train failed", "local-0: system ok"]
    assert (tmp_path / "local-0" / SYSTEM_FACTS_FILE).is_file()
    assert (tmp_path / "local-0" / "train" / "train-0.log").is_file()


@pytest.mark.timeout(60)
def test_stop_all_ends_every_node_at_once(tmp_path):
    steps = [Step("train", ("sleep", "60"), "metrics.jsonl", judge_facts),
             Step("system", ("sleep", "60"), SYSTEM_FACTS_FILE, judge_facts)]
    executions = OpenExecutions()
    found: list[dict] = []
    threads = [threading.Thread(target=lambda i=i: found.append(run_node(
        f"local-{i}", LocalExecutor(grace_s=1), steps, tmp_path, executions, lambda: 60.0, lambda line: None)))
        for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    executions.stop_all()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 8 and len(found) == 2
    for row in found:  # the running step was killed, the next one never started
        assert row["state"] == "killed" and row["reason"].endswith("the check was interrupted")


def test_training_ranks_share_the_cores_when_nodes_share_a_machine():
    def threads(config: NodeTrainConfig, sharing: int) -> str | None:
        args = list(train_step(None, config, config.threads or shared_threads(config.nproc(), sharing),
                               "node_level.train").command)
        return args[args.index("--threads") + 1] if "--threads" in args else None

    cores = os.cpu_count() or 1
    assert threads(NodeTrainConfig(nproc_per_node=1), 1) is None  # a host of its own: the workload's default
    assert threads(NodeTrainConfig(nproc_per_node=1), 2) == str(max(1, cores // 2))
    assert threads(NodeTrainConfig(nproc_per_node=2), 3) == str(max(1, cores // 6))
    assert threads(NodeTrainConfig(nproc_per_node=1, threads=3), 2) == "3"


@pytest.mark.timeout(60)
def test_the_row_carries_the_most_urgent_action_of_the_nodes_steps(tmp_path):
    """A step's judge that recommends an action (gpu_health: details.action) puts it on the node's row; the row
    keeps the most urgent one, and one that takes the node out of service makes it a failed node."""
    write = ("{python}", "-c", "import sys; open(sys.argv[1], 'w').write('x')")

    def judged_with(action: str):
        def judge(data: bytes) -> CheckResult:
            result = CheckResult("gpu_health")
            result.details["action"] = action
            return result
        return judge

    steps = [Step("system", (*write, "{volume[results]}/a"), "a", judged_with("reset_gpu")),
             Step("train", (*write, "{volume[results]}/b"), "b", judged_with("restart_workload"))]
    row = run_node("local-0", LocalExecutor(grace_s=1), steps, tmp_path, OpenExecutions(), lambda: 30.0,
                   lambda line: None)
    assert row["state"] == "succeeded" and row["action"] == "reset_gpu"
    assert node_problem(row) == "local-0: action: reset GPU"
