"""`dcforge accept` end to end as a user runs it: real subprocess, real report files, baseline, re-render."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def dcforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def only_report(cwd: Path) -> Path:
    (directory,) = (cwd / "reports" / "local").iterdir()
    return directory


def test_accept_system_writes_three_reports_and_rerenders(tmp_path):
    proc = dcforge("accept", "--env", "local", "--only", "system", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    directory = only_report(tmp_path)
    assert f"Report: reports/local/{directory.name}/report.html" in proc.stdout
    report = json.loads((directory / "report.json").read_text())
    assert report["status"] == "pass" and report["metadata"]["environment"] == "local"
    system = next(c for c in report["checks"] if c["name"] == "system")
    assert system["status"] == "pass" and system["metrics"]["cpu_count"]["value"] >= 1
    others = [c for c in report["checks"] if c["name"] != "system"]
    assert all(c["status"] == "skipped" and "not selected" in c["reason"] for c in others)
    ET.parse(directory / "junit.xml")
    html = (directory / "report.html").read_text()
    assert "<h1>dcforge acceptance: local" in html and "system" in html

    (directory / "report.html").unlink()
    proc = dcforge("report", str(directory), cwd=tmp_path)
    assert proc.returncode == 0 and (directory / "report.html").exists()


def test_baseline_is_recorded_and_informational_metrics_never_regress(tmp_path):
    baseline = tmp_path / "baseline.json"
    proc = dcforge("accept", "--only", "system", cwd=tmp_path)
    assert proc.returncode == 0
    report = json.loads((only_report(tmp_path) / "report.json").read_text())
    # a baseline from a "bigger" machine that (wrongly) marked memory as directional
    system = next(c for c in report["checks"] if c["name"] == "system")
    system["metrics"]["memory_gi"]["value"] *= 10
    system["metrics"]["memory_gi"]["better"] = "higher"
    baseline.write_text(json.dumps(report))
    run_dir = tmp_path / "second"
    run_dir.mkdir()
    # the current run reports memory as informational (better=None): inventory is never a regression
    proc = dcforge("accept", "--only", "system", "--baseline", str(baseline), "--fail-on-regression", cwd=run_dir)
    assert proc.returncode == 0, proc.stdout
    current = json.loads((only_report(run_dir) / "report.json").read_text())
    assert current["baseline"]["path"] == str(baseline)
    assert current["baseline"]["regressions"] == []


def test_bad_baseline_is_bad_input(tmp_path):
    (tmp_path / "b.json").write_text("{}")
    proc = dcforge("accept", "--only", "system", "--baseline", str(tmp_path / "b.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "not a dcforge report.json" in proc.stderr and "Traceback" not in proc.stderr


def test_full_local_acceptance_passes_every_check_and_slo(tmp_path):
    """What `make accept` runs: all twelve checks on this machine, judged against Pulumi.local.yaml's SLOs."""
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "local"], capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    report = json.loads((only_report(tmp_path) / "report.json").read_text())
    problems = [f"{c['name']}: {c['status']} {c['reason']}" for c in report["checks"] if c["status"] != "pass"]
    problems += [f"{s['metric']} {s['expression']}: {s['verdict']} {s['reason']}" for s in report["slos"]
                 if s["verdict"] != "pass"]
    assert proc.returncode == 0 and not problems, "\n".join(problems) + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [c["name"] for c in report["checks"]] == [
        "system", "train", "allreduce", "checkpoint", "checkpoint_backup", "storage", "train_failover", "compression",
        "compliance", "monitoring", "inference", "inference_failover"]
    plots = {p["title"] for c in report["checks"] for p in c["plots"]}
    assert len(plots) >= 6  # loss, throughput, busbw, storage per class, failover timelines, latency, histograms


def test_a_gpu_node_that_shows_no_gpu_never_passes_its_gpu_checks(tmp_path):
    """As an operator runs it on a GPU node whose GPUs are gone (this GPU-less machine): `prod` declares 8 GPUs per
    node, so gpu_health fails with the shortfall; the `gpu` environment declares none, so both GPU checks skip and
    the run verified nothing. Neither exits 0; each says why in one line."""
    from dcforge.harness.node import visible_gpus

    if visible_gpus():
        pytest.skip("this machine has GPUs: the no-GPU paths cannot be shown here")
    prod = dcforge("accept", "--env", "prod", "--only", "gpu_health", cwd=tmp_path)
    assert prod.returncode == 1, prod.stdout + prod.stderr
    assert "Traceback" not in prod.stdout + prod.stderr
    (line,) = [line for line in prod.stdout.splitlines() if line.startswith("FAIL ")]
    assert "gpu_health" in line and "declares 8 H100-SXM per node and 0 are visible" in line
    assert "recommended action: reboot node" in line
    assert any(line.startswith("FAIL: checks ") for line in prod.stdout.splitlines())
    gpu = dcforge("accept", "--env", "gpu", "--only", "gpu_health,gpu_bandwidth", cwd=tmp_path)
    assert gpu.returncode == 1, gpu.stdout + gpu.stderr
    (summary,) = [line for line in gpu.stdout.splitlines() if line.startswith("NOTHING VERIFIED")]
    assert summary.startswith("NOTHING VERIFIED: checks ") and "no check passed and no SLO was judged" in summary
    (directory,) = (tmp_path / "reports" / "gpu").iterdir()
    assert json.loads((directory / "report.json").read_text())["status"] == "nothing_verified"
