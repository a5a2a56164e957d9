"""A cancelled CI job never leaves a training process, a listening server or a load generator behind.

`dcforge accept` is sent SIGTERM (CI cancel, timeout(1), Kubernetes), SIGHUP (the terminal went away) or SIGKILL
while torchrun trains (`train`), while torchrun restarts a failed rank (`train_failover`) and while Locust loads
the bundled server (`inference`). SIGTERM and SIGHUP end the run like Ctrl-C: exit 128 + signal, report
`interrupted` with the check marked by the signal's name. After any of the three, no process of the run remains
a few seconds later: not one of the processes seen just before the signal, nothing in their process groups,
nothing whose command line names the run's report directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dcforge.paths import REPO_ROOT

pytestmark = pytest.mark.slow

GONE_WITHIN_S = 10.0
"""SIGTERM grace (5 s) of the slowest child plus margin on a busy machine; a leak is forever, not 10 s."""

# Small, long-running settings: the run is interrupted, so only the time to reach the phase matters.
LONG_RUNNING = {
    "        steps: 20\n": "        steps: 100000\n",
    "        steps: 12\n        checkpointEvery: 4\n        failAtStep: 7\n":
        "        steps: 100000\n        checkpointEvery: 2\n        failAtStep: 3\n",
    "      inference:\n        replicas: 3\n        users: 8\n        durationS: 18\n":
        "      inference:\n        replicas: 2\n        users: 2\n        durationS: 300\n        warmupPerReplica: 1\n",
}


@dataclass(frozen=True)
class Proc:
    pid: int
    start_time: int
    """Kernel start time: tells a process from a later one that got the same pid."""
    pgid: int
    cmdline: str


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has ended; only its parent's bookkeeping is left
        return None
    return Proc(pid, int(fields[19]), int(fields[2]), cmdline)


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def all_processes() -> list[Proc]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            found.append(proc)
    return found


def descendants(root: int) -> list[Proc]:
    procs = all_processes()
    parents = {p.pid: parent_of(p.pid) for p in procs}
    family, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return [p for p in procs if p.pid in family and p.pid != root]


def survivors(seen: list[Proc], marker: str) -> list[Proc]:
    """Processes of the run still alive: seen before the signal (same pid and start time), in one of their
    process groups, or naming the run's directory on their command line."""
    identities = {(p.pid, p.start_time) for p in seen}
    groups = {p.pgid for p in seen}
    return [p for p in all_processes() if p.pid != os.getpid() and (
        (p.pid, p.start_time) in identities or p.pgid in groups or marker in p.cmdline)]


def wait_until_gone(seen: list[Proc], marker: str) -> list[Proc]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := survivors(seen, marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_leftovers(left: list[Proc]) -> None:
    """Never leave this test's own processes to the next test, even when it failed."""
    for proc in left:
        for kill in (lambda: os.killpg(proc.pgid, signal.SIGKILL), lambda: os.kill(proc.pid, signal.SIGKILL)):
            try:
                kill()
            except OSError:
                pass


def report_of(reports: Path) -> dict | None:
    found = list(reports.glob("*/*/report.json"))
    if not found:
        return None
    try:
        return json.loads(found[0].read_text())
    except (OSError, json.JSONDecodeError):
        return None


def in_phase(check: str, procs: list[Proc]) -> bool:
    """The child this test is about is up: torchrun's workers, or Locust loading the server."""
    if check in ("train", "train_failover"):
        return sum("workloads/train.py" in p.cmdline and "torch.distributed.run" not in p.cmdline
                   for p in procs) >= 2
    return any(" -m locust " in p.cmdline for p in procs) and sum("workloads.serve" in p.cmdline for p in procs) >= 3


# Every terminating signal a CI runner, a terminal or the kernel sends, against each kind of child: torchrun
# workers (train), a torchrun restarted by elastic recovery (train_failover), a server with Locust (inference).
CASES = [(check, sig) for check in ("train", "train_failover", "inference")
         for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGKILL)]


@pytest.mark.parametrize("check, sig", CASES, ids=[f"{c}-{s.name}" for c, s in CASES])
def test_signal_during_a_check_ends_the_run_and_every_child(env_file, tmp_path, check, sig):
    signal_name = sig.name
    env = env_file("local", replace=LONG_RUNNING)
    reports = tmp_path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "dcforge.cli", "accept", "--env-file", str(env), "--only", check,
                             "--reports", str(reports)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: list[Proc] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            report = report_of(reports)
            seen = descendants(proc.pid)
            if report and report["metadata"]["running"] == check and in_phase(check, seen):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{check} never reached its phase: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}")
        time.sleep(1.0)  # a moment into the phase (Locust sending, workers stepping)
        seen = descendants(proc.pid)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        left = wait_until_gone(seen, str(tmp_path))
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_leftovers(survivors(seen, str(tmp_path)))
    assert not left, f"outlived dcforge after {signal_name}: {[(p.pid, p.cmdline[:120]) for p in left]}"

    report = report_of(reports)
    checks = {c["name"]: c for c in report["checks"]}
    if sig == signal.SIGKILL:  # nothing of dcforge runs any more: the report stays as it was when killed
        assert proc.returncode == -signal.SIGKILL
        assert report["status"] == "running" and report["metadata"]["running"] == check
        return
    assert proc.returncode == 128 + sig, stdout + stderr
    assert "Traceback" not in stderr and f"interrupted by {signal_name}" in stderr
    assert report["status"] == "interrupted" and report["metadata"]["interrupted_by"] == signal_name
    assert checks[check]["status"] == "error"
    assert checks[check]["reason"] == f"interrupted by {signal_name} while running"
    assert checks[check]["details"]["interrupted_by"] == signal_name


def test_sigkilled_server_master_leaves_no_replica(tmp_path):
    """`python -m workloads.serve` on its own, no harness around it: its replicas, and each replica's engine
    process, die with the master."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path / "state"
    env = {**os.environ, "DCFORGE_API_KEY": "test-key", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    master = subprocess.Popen([sys.executable, "-m", "workloads.serve", "--port", str(port), "--replicas", "2",
                               "--state-dir", str(state)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    replicas: list[Proc] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(list(state.glob("ready-*"))) < 2:
            assert master.poll() is None, "the server exited before its replicas were ready"
            time.sleep(0.2)
        replicas = descendants(master.pid)
        engines = [p for p in replicas if "workloads.serving.engine_process" in p.cmdline]
        assert len(replicas) == 4 and len(engines) == 2, replicas  # 2 replicas, each with its engine process
        master.kill()
        master.wait(timeout=10)
        left = wait_until_gone(replicas, str(state))
    finally:
        if master.poll() is None:
            master.kill()
        kill_leftovers(survivors(replicas, str(state)))
    assert not left, f"replicas outlived their SIGKILLed master: {[(p.pid, p.cmdline[:120]) for p in left]}"
