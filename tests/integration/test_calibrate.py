"""`dcforge calibrate` for real on CPU: the all-reduce check run N times, a calibrated profile written from the
runs' own reports, and that profile judging a later run."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcforge.paths import STACKS_DIR
from dcforge.spec.profiles import load_profile_file

pytestmark = pytest.mark.slow


def dcforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", *args], capture_output=True, text=True,
                          timeout=400, cwd=cwd)


def test_calibrate_writes_a_profile_that_later_runs_are_judged_against(tmp_path):
    text = (STACKS_DIR / "Pulumi.local.yaml").read_text()
    small = "        maxBytes: 1M\n        factor: 4\n"
    text = text.split("        maxBytes: 64M")[0] + small + text.split("        factor: 4\n", 1)[1]
    env = tmp_path / "Pulumi.cal.yaml"
    env.write_text(text)
    proc = dcforge("calibrate", "--env-file", str(env), "--runs", "2", "--checks", "allreduce", "--k", "2",
                   "-o", "cal.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    profile = load_profile_file(tmp_path / "cal.yaml")
    assert profile.calibration["runs"] == 2 and profile.calibration["k"] == 2 and profile.calibration["torch"]
    busbw = profile.thresholds["allreduce.busbw_gbps"]
    assert busbw.status == "calibrated" and busbw.op == ">=" and "2 runs" in busbw.source
    runs = sorted((tmp_path / "reports" / "cal").glob("calibrate-*/run-*/report.json"))
    measured = [next(c for c in json.loads(p.read_text())["checks"] if c["name"] == "allreduce")
                ["metrics"]["busbw_gbps"]["value"] for p in runs]
    assert len(measured) == 2
    assert busbw.median == pytest.approx(statistics.median(measured), rel=1e-5)
    assert busbw.spread == pytest.approx(statistics.stdev(measured), rel=1e-5, abs=1e-6)
    assert busbw.value == pytest.approx(busbw.median - 2 * busbw.spread, rel=1e-4, abs=1e-6)
    latency = profile.thresholds["allreduce.latency_us"]
    assert latency.op == "<=" and latency.value >= latency.median  # lower is better: median + k·spread
    assert "system" not in yaml.safe_load((tmp_path / "cal.yaml").read_text())["thresholds"]

    # the calibrated profile judges a later run; the environment file's own SLOs still win
    env.write_text(text.replace("  dcforge:acceptance:\n", "  dcforge:acceptance:\n    profile: cal.yaml\n"))
    proc = dcforge("accept", "--env-file", str(env), "--only", "allreduce", cwd=tmp_path)
    (report_dir,) = (tmp_path / "reports" / "cal").glob("2*")
    report = json.loads((report_dir / "report.json").read_text())
    slos = {s["metric"]: s for s in report["slos"]}
    assert slos["allreduce.busbw_gbps"]["source"] == "environment file"
    assert slos["allreduce.latency_us"]["source"].startswith("profile cal (calibrated")
    assert report["metadata"]["profile"] == "profile file cal.yaml"
