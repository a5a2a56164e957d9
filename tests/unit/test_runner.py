"""The runner: statuses, SLO verdicts, exit codes, timeouts, interruption keeping results, report files."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from dcforge import checks
from dcforge.harness.lifecycle import Interrupted
from dcforge.harness.runner import RunState, run_acceptance, select_checks, utc_now
from dcforge.report import build_report, rerender, write_report_files
from dcforge.spec import load_environment

NAMES = ("first", "second", "third")


@pytest.fixture
def registry(monkeypatch):
    table = {**checks.CHECKS, **{name: "tests.unit.harness_checks:ValueCheck" for name in NAMES}}
    monkeypatch.setattr(checks, "CHECKS", table)
    return table


def make_env(env_file, settings: dict, slos: dict, timeouts: dict | None = None):
    lines = ["config:", "  dcforge:acceptance:", f"    checks: [{', '.join(NAMES)}]",
             f"    settings: {json.dumps(settings)}"]
    lines.append(f"    slos: {json.dumps(slos)}")
    if timeouts:
        lines.append(f"    timeoutsS: {json.dumps(timeouts)}")
    base = (env_file("local").read_text().split("  dcforge:acceptance:")[0]).split("config:\n", 1)[1]
    text = "config:\n" + base + "\n".join(lines[1:]) + "\n"
    return load_environment(path=env_file(text=text, name="harness"))


def run(env, tmp_path, only=None, skip=None) -> tuple[RunState, dict]:
    written: list[dict] = []

    def write(state):
        report = build_report(state)
        write_report_files(report, tmp_path / "report", html=False)
        written.append(report)

    state = RunState(env=env, report_dir=tmp_path / "report", started_at=utc_now(),
                     selected=select_checks(env.spec.acceptance.checks, only, skip))
    (tmp_path / "report").mkdir(exist_ok=True)
    run_acceptance(state, write, log=lambda line: None)
    return state, written[-1]


def test_all_pass_exit_0(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"value": 5}}, {"first.score": ">= 5", "second.latency_ms.p95": "< 200"})
    state, report = run(env, tmp_path)
    assert state.exit_code == 0 and report["status"] == "pass"
    assert [c["status"] for c in report["checks"]] == ["pass", "pass", "pass"]
    assert report["checks"][0]["artefacts"]["note"] == "artefacts/value/note.txt"
    assert report["schema"] == "dcforge.report/v1"


def test_slo_failure_exit_1(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"value": 5}}, {"first.score": "> 5"})
    state, report = run(env, tmp_path)
    assert state.exit_code == 1 and report["slos"][0]["verdict"] == "fail"


def test_check_failure_and_error_fail_the_run_and_others_still_run(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"outcome": "fail"}, "second": {"outcome": "raise"}}, {})
    state, report = run(env, tmp_path)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses == {"first": "fail", "second": "error", "third": "pass"}
    assert state.exit_code == 1
    second = report["checks"][1]
    assert "RuntimeError: boom" in second["reason"]
    assert "Traceback" in (tmp_path / "report" / second["artefacts"]["traceback"]).read_text()


def test_skipped_check_is_never_passed_and_its_slos_are_skipped(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"outcome": "skip"}}, {"first.score": ">= 0"})
    state, report = run(env, tmp_path)
    assert report["checks"][0] == {**report["checks"][0], "status": "skipped", "reason": "no GPU here"}
    assert report["slos"][0]["verdict"] == "skipped"
    assert report["summary"]["checks"] == {"skipped": 1, "pass": 2}


def test_slo_on_metric_nobody_produced_is_an_error(registry, env_file, tmp_path):
    env = make_env(env_file, {}, {"first.nonexistent": "> 0"})
    state, report = run(env, tmp_path)
    assert report["slos"][0]["verdict"] == "error" and state.exit_code == 1


def test_only_and_skip_select_and_report_the_rest_as_skipped(registry, env_file, tmp_path):
    env = make_env(env_file, {}, {"third.score": "> 0"})
    state, report = run(env, tmp_path, only=["first", "second"], skip=["second"])
    statuses = {c["name"]: (c["status"], c["reason"]) for c in report["checks"]}
    assert statuses["first"][0] == "pass"
    assert statuses["second"] == ("skipped", "not selected (--only/--skip)")
    assert report["slos"][0]["verdict"] == "skipped" and state.exit_code == 0


def test_unknown_only_name_is_bad_input():
    from dcforge.errors import DcforgeError

    with pytest.raises(DcforgeError, match="--only: nope"):
        select_checks(["a", "b"], ["nope"], None)


def test_timeout_turns_a_hanging_check_into_an_error(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"sleep_s": 30}}, {}, timeouts={"first": 0.5})
    started = time.monotonic()
    state, report = run(env, tmp_path)
    assert time.monotonic() - started < 10
    assert report["checks"][0]["status"] == "error" and "timed out after 0.5 s" in report["checks"][0]["reason"]
    assert report["checks"][1]["status"] == "pass"


def test_interrupt_keeps_measured_results_and_marks_the_rest(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"value": 7}, "second": {"outcome": "interrupt"}}, {"first.score": "> 1"})
    state, report = run(env, tmp_path)
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["status"] == "interrupted" and state.interrupted
    checks = {c["name"]: c for c in on_disk["checks"]}
    assert checks["first"]["metrics"]["score"]["value"] == 7
    assert checks["second"]["status"] == "error" and "interrupted" in checks["second"]["reason"]
    assert checks["third"]["status"] == "skipped" and "interrupted" in checks["third"]["reason"]
    assert on_disk["slos"][0]["verdict"] == "pass"


def test_junit_parses_back_with_one_case_per_check_and_slo(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"outcome": "fail"}, "second": {"outcome": "skip"}},
                   {"third.score": "> 5", "third.latency_ms.p95": "< 1000"})
    run(env, tmp_path)
    root = ET.parse(tmp_path / "report" / "junit.xml").getroot()
    assert root.tag == "testsuites"
    cases = root.findall(".//testcase")
    assert len(cases) == 3 + 2
    assert root.get("tests") == "5" and root.get("failures") == "2" and root.get("skipped") == "1"
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"first", "third.score > 5"}


def test_rerender_builds_html_from_json(registry, env_file, tmp_path):
    env = make_env(env_file, {}, {"first.score": "> 0"})
    run(env, tmp_path)
    assert not (tmp_path / "report" / "report.html").exists()
    rerender(tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert "first.score" in page and "Plotly" in page and "<script src=" not in page


def test_gpu_workload_fails_without_running_when_declared_gpus_are_missing(monkeypatch, env_file, tmp_path):
    """A GPU node that shows no GPU: the GPU workload fails with declared and visible counts and the recommended
    action (a skip would let the node pass); a CPU check beside it still runs."""
    from dcforge.harness.node import visible_gpus

    if visible_gpus():
        pytest.skip("this machine has GPUs")
    monkeypatch.setattr(checks, "CHECKS", {**checks.CHECKS, "gpu": "tests.unit.harness_checks:GpuValueCheck",
                                           "cpu": "tests.unit.harness_checks:ValueCheck"})
    text = env_file("dev").read_text()
    text = text[:text.index("  dcforge:acceptance:")] + (
        "  dcforge:acceptance:\n    checks: [gpu, cpu]\n    slos: {gpu.score: '> 0'}\n")
    env = load_environment(path=env_file(text=text, name="gpus"))
    state, report = run(env, tmp_path)
    statuses = {c["name"]: (c["status"], c["reason"]) for c in report["checks"]}
    assert statuses["gpu"] == ("fail", "pool 'train-h100' declares 8 H100-SXM per node and 0 are visible on this "
                                       "machine (driver not loaded or GPUs off the bus); recommended action: reboot "
                                       "node")
    (gpu,) = [c for c in report["checks"] if c["name"] == "gpu"]
    assert gpu["details"]["findings"][0]["action"] == "reboot_node"
    assert statuses["cpu"][0] == "pass"
    assert report["slos"][0]["verdict"] == "error" and "the check failed: pool 'train-h100'" in report["slos"][0]["reason"]
    assert state.exit_code == 1 and report["status"] == "fail"


def test_a_run_of_only_skipped_checks_verified_nothing_and_is_not_a_pass(registry, env_file, tmp_path):
    """Every selected check skipped and no SLO judged: status nothing_verified, exit 1, said in JUnit and HTML."""
    env = make_env(env_file, {name: {"outcome": "skip"} for name in NAMES}, {"first.score": ">= 0"})
    state, report = run(env, tmp_path)
    assert report["summary"]["checks"] == {"skipped": 3} and report["slos"][0]["verdict"] == "skipped"
    assert report["status"] == "nothing_verified" and state.exit_code == 1
    assert report["status_reason"] == "no check passed and no SLO was judged (3 checks skipped, each with its reason)"
    root = ET.parse(tmp_path / "report" / "junit.xml").getroot()
    (verdict,) = [c for c in root.iter("testcase") if c.get("name") == "verdict"]
    assert verdict.find("failure").get("message").startswith("nothing_verified: no check passed")
    assert root.get("failures") == "1"
    rerender(tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert "NOTHING VERIFIED" in page and "no check passed and no SLO was judged" in page


def test_a_run_where_one_check_passed_and_the_others_skipped_still_passes(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"outcome": "skip"}, "second": {"outcome": "skip"}}, {})
    state, report = run(env, tmp_path)
    assert report["summary"]["checks"] == {"skipped": 2, "pass": 1}
    assert report["status"] == "pass" and report["status_reason"] == "" and state.exit_code == 0


def test_only_selecting_nothing_that_runs_verifies_nothing(registry, env_file, tmp_path):
    env = make_env(env_file, {"first": {"outcome": "skip"}}, {"second.score": "> 0"})
    state, report = run(env, tmp_path, only=["first"])
    assert report["status"] == "nothing_verified" and state.exit_code == 1



@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_terminating_signal_interrupts_the_running_check(registry, env_file, tmp_path, sig, code):
    env = make_env(env_file, {"first": {"value": 7}, "second": {"sleepS": 30}}, {"first.score": "> 1"})
    handler_before = signal.getsignal(sig)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), sig))  # while `second` sleeps
    timer.start()
    started = time.monotonic()
    try:
        state, report = run(env, tmp_path)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert state.exit_code == code and report["status"] == "interrupted"
    assert report["metadata"]["interrupted_by"] == sig.name
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["first"]["status"] == "pass" and checks["first"]["metrics"]["score"]["value"] == 7
    assert checks["second"]["status"] == "error" and f"interrupted by {sig.name}" in checks["second"]["reason"]
    assert checks["second"]["details"]["interrupted_by"] == sig.name
    assert checks["third"]["reason"] == f"not run: interrupted by {Interrupted(sig).description}"
    assert signal.getsignal(sig) == handler_before  # the run's handlers are gone with the run


def test_the_deploy_record_of_dcforge_up_is_the_reports_deploy_section(registry, env_file, tmp_path):
    from dcforge.report.html import render_html

    env = make_env(env_file, {"first": {"value": 5}}, {})
    record = {"env_name": "harness", "operation": "up", "backend_url": "file:///state", "secrets_provider": "passphrase",
              "versions": {"pulumi": "v3.274.0", "pulumi-resource-kubernetes": "v4.0.0-20260115033456-f47bc2d6f199"},
              "changes": {"create": 3, "same": 1}, "by_type": {"kubernetes:core/v1:Namespace": {"create": 3}},
              "duration_s": 12.5, "outputs": {"environment": "harness"}}
    plain = build_report(RunState(env=env, report_dir=tmp_path, started_at=utc_now(), selected=[]))
    assert plain["deploy"] is None and "<h2>Deploy</h2>" not in render_html(plain)
    report = build_report(RunState(env=env, report_dir=tmp_path, started_at=utc_now(), selected=[], deploy=record))
    assert report["deploy"] == record
    page = render_html(json.loads(json.dumps(report)))
    assert "<h2>Deploy</h2>" in page and "3 create, 1 same" in page and "v4.0.0-20260115033456-f47bc2d6f199" in page
