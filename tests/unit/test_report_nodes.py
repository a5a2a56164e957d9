"""The per-node table (`details.nodes`) in the HTML report and as JUnit testcases per node."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dcforge.report.html import render_html
from dcforge.report.junit import junit_xml
from dcforge.report.nodes import node_problem

ROWS = [
    {"node": 0, "host": "gpu-01", "busbw_gbps": 1.25, "verdict": "cleared", "outlier": False},
    {"node": 1, "host": "gpu-02", "busbw_gbps": 0.0098, "verdict": "slow", "outlier": True},
    {"node": 2, "host": "gpu-03", "busbw_gbps": 1.5, "verdict": "cleared", "outlier": False},
]


def report_with(rows):
    return {"metadata": {"environment": "hosts", "started_at": "2026-01-01T00:00:00Z"}, "status": "fail", "slos": [],
            "checks": [{"name": "slow_node", "status": "fail", "reason": "slow node: gpu-02", "metrics": {},
                        "details": {"nodes": rows}}]}


def test_node_problem_from_state_verdict_and_outlier():
    assert node_problem(ROWS[0]) == ""
    assert node_problem(ROWS[1]) == "gpu-02: slow node"
    assert node_problem({"host": "h", "outlier": True}).startswith("h: outlier")
    assert node_problem({"host": "h", "state": "failed", "exit_code": 1, "reason": "ssh failed"}) == \
        "h: failed (exit 1): ssh failed"
    assert node_problem({"host": "h", "state": "succeeded"}) == ""


def test_html_shows_a_node_table_with_the_slow_node_highlighted():
    page = render_html(report_with(ROWS))
    assert "<table class='nodes'>" in page
    assert "<th>busbw_gbps</th>" in page and "<th>verdict</th>" in page
    highlighted = [line for line in page.splitlines() if line.startswith("<tr class=outlier")]
    assert len(highlighted) == 1 and "gpu-02" in highlighted[0] and "0.0098" in highlighted[0]


def test_junit_has_a_testcase_per_node():
    suites = ET.fromstring(junit_xml(report_with(ROWS)).split("\n", 1)[1])
    nodes = next(s for s in suites if s.get("name") == "dcforge.nodes.hosts")
    cases = {c.get("name"): c for c in nodes}
    assert list(cases) == ["slow_node gpu-01", "slow_node gpu-02", "slow_node gpu-03"]
    assert cases["slow_node gpu-02"].find("failure").get("message") == "gpu-02: slow node"
    assert cases["slow_node gpu-01"].find("failure") is None
    assert nodes.get("tests") == "3" and nodes.get("failures") == "1"


def test_reports_without_nodes_are_unchanged():
    report = report_with(ROWS)
    del report["checks"][0]["details"]["nodes"]
    assert "class='nodes'" not in render_html(report)
    assert "dcforge.nodes" not in junit_xml(report)


def test_a_node_whose_action_takes_it_out_of_service_did_not_pass_and_says_what_to_do():
    reset = {"host": "gpu-04", "state": "succeeded", "action": "reset_gpu"}
    assert node_problem(reset) == "gpu-04: action: reset GPU"
    assert node_problem({"host": "h", "state": "failed", "reason": "x", "action": "reboot_node"}) == \
        "h: failed: x (action: reboot node)"
    assert node_problem({"host": "h", "action": "restart_workload"}) == ""  # restarting the job is no node fault
    assert node_problem({"host": "h", "action": "no-such-action"}) == ""
    cases = ET.fromstring(junit_xml(report_with(ROWS[:1] + [reset])).split("\n", 1)[1]).iter("testcase")
    failed = {case.get("name"): case.find("failure") for case in cases}
    assert failed["slow_node gpu-04"] is not None and "reset GPU" in failed["slow_node gpu-04"].get("message")
    page = render_html(report_with([reset]))
    assert "reset GPU" in page
