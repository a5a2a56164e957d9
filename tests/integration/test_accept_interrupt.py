"""Ctrl-C during a real torchrun check: exit 130, every result measured so far kept, no child left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def read_report(cwd: Path) -> dict | None:
    reports = list((cwd / "reports" / "local").glob("*/report.json"))
    if not reports:
        return None
    try:
        return json.loads(reports[0].read_text())
    except json.JSONDecodeError:  # never happens with atomic writes; kept so a regression fails loudly below
        return None


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_ctrl_c_keeps_results_and_reaps_torchrun(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dcforge.cli", "accept", "--env", "local", "--only",
                             "system,train"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            report = read_report(tmp_path)
            if report and report["metadata"]["running"] == "train" and processes_mentioning(str(tmp_path)):
                break
            time.sleep(0.2)
        else:
            pytest.fail("train never started")
        time.sleep(2)  # torchrun and its workers are up
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    report = read_report(tmp_path)
    assert report["status"] == "interrupted" and report["metadata"]["interrupted_by"] == "SIGINT"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["system"]["status"] == "pass" and checks["system"]["metrics"]["cpu_count"]["value"] >= 1
    assert checks["train"]["status"] == "error" and "interrupted" in checks["train"]["reason"]
    time.sleep(1)
    assert processes_mentioning(str(tmp_path)) == [], "torchrun or its workers outlived the interrupted check"
    assert os.path.exists(next((tmp_path / "reports" / "local").iterdir()) / "report.html")
