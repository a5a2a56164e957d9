"""JUnit XML: one testcase per check, one per node of checks that report nodes, and one per SLO, so CI systems
show acceptance like tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dcforge.report.nodes import node_problem, node_rows


def junit_xml(report: dict) -> str:
    env = report["metadata"]["environment"]
    checks, slos = report.get("checks", []), report.get("slos", [])
    suites = ET.Element("testsuites", name=f"dcforge accept --env {env}")
    suites.append(_suite(f"dcforge.checks.{env}", [
        (check["name"], check["status"], check.get("reason", ""), check.get("duration_s", 0.0), _check_output(check))
        for check in checks
    ], report["metadata"].get("started_at", "")))
    node_cases = [(f"{check['name']} {row['host']}", "fail" if node_problem(row) else "pass", node_problem(row), 0.0,
                   ", ".join(f"{k} = {v}" for k, v in row.items() if k != "host"))
                  for check in checks for row in node_rows(check)]
    if node_cases:  # a testcase per node of every check that reports nodes
        suites.append(_suite(f"dcforge.nodes.{env}", node_cases, report["metadata"].get("started_at", "")))
    if report.get("status_reason"):  # a run that verified nothing is a failure to CI, not a suite of skips
        suites.append(_suite(f"dcforge.run.{env}", [("verdict", "fail", f"{report['status']}: "
                                                     f"{report['status_reason']}", 0.0, "")],
                             report["metadata"].get("started_at", "")))
    suites.append(_suite(f"dcforge.slos.{env}", [
        (f"{slo['metric']} {slo['expression']}", slo["verdict"], slo.get("reason", ""), 0.0,
         f"value: {slo['value']}") for slo in slos
    ], report["metadata"].get("started_at", "")))
    for attribute in ("tests", "failures", "errors", "skipped"):
        suites.set(attribute, str(sum(int(s.get(attribute, "0")) for s in suites)))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _suite(name: str, cases: list[tuple[str, str, str, float, str]], timestamp: str) -> ET.Element:
    suite = ET.Element("testsuite", name=name, timestamp=timestamp)
    counts = {"fail": 0, "error": 0, "skipped": 0, "running": 0}
    for case_name, status, reason, duration, output in cases:
        case = ET.SubElement(suite, "testcase", classname=name, name=case_name, time=f"{duration:.3f}")
        if status == "fail":
            ET.SubElement(case, "failure", message=reason or "failed").text = reason
        elif status == "error":
            ET.SubElement(case, "error", message=reason or "error").text = reason
        elif status == "skipped":
            ET.SubElement(case, "skipped", message=reason or "skipped")
        if output:
            ET.SubElement(case, "system-out").text = output
        counts[status] = counts.get(status, 0) + 1
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(counts["fail"]))
    suite.set("errors", str(counts["error"]))
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{sum(c[3] for c in cases):.3f}")
    return suite


def _check_output(check: dict) -> str:
    return "\n".join(f"{name} = {metric['value']:g} {metric.get('unit', '')}".rstrip()
                     for name, metric in check.get("metrics", {}).items())
