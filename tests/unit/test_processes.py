"""ManagedProcess: the whole process group dies with the check, promptly, and timeouts are enforced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dcforge.harness.processes import RUNNING, ManagedProcess, run_bounded, stop_everything

# a parent that starts a grandchild and both sleep: the grandchild must die with the group
FAMILY = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
          " time.sleep(60)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead for our purposes
        return stat.read().split()[2] != "Z"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def test_stop_kills_grandchildren_quickly(tmp_path):
    with ManagedProcess([sys.executable, "-c", FAMILY], log_path=tmp_path / "log.txt") as proc:
        deadline = time.monotonic() + 10
        while not children_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (grandchild,) = children_of(proc.pid)
        started = time.monotonic()
    assert time.monotonic() - started < 3, "stop waited for the grace period although the group was gone"
    assert not alive(proc.pid) and not alive(grandchild)


def test_exception_inside_the_block_still_kills(tmp_path):
    with pytest.raises(RuntimeError):
        with ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
            raise RuntimeError("check failed")
    assert not alive(proc.pid)


def test_run_bounded_times_out_and_reaps():
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 1 s"):
        run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1)
    assert time.monotonic() - started < 8


def test_run_bounded_returns_exit_code(tmp_path):
    assert run_bounded([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], timeout_s=30,
                       log_path=tmp_path / "out.log") == 3
    assert (tmp_path / "out.log").read_text().strip() == "hi"


# A stand-in for dcforge: starts FAMILY under ManagedProcess, prints the leader's pid, then waits to be killed.
HARNESS = ("import sys, time; from dcforge.harness.processes import ManagedProcess; "
           f"proc = ManagedProcess([sys.executable, '-c', {FAMILY!r}]).start(); print(proc.pid, flush=True); "
           "time.sleep(60)")


def wait_dead(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_children_and_grandchildren_die_with_a_sigkilled_harness():
    harness = subprocess.Popen([sys.executable, "-c", HARNESS], stdout=subprocess.PIPE, text=True)
    leader = grandchildren = None
    try:
        leader = int(harness.stdout.readline())
        deadline = time.monotonic() + 10
        while not (grandchildren := children_of(leader)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert grandchildren, "FAMILY never started its grandchild"
        harness.kill()  # no Python code of the harness runs any more: the kernel and the reaper must do it
        harness.wait(timeout=10)
        left = wait_dead([leader, *grandchildren], timeout_s=8)
    finally:
        for pid in [leader or 0, *(grandchildren or [])]:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not left, "a child outlived its SIGKILLed parent"


def test_stop_everything_stops_children_left_running():
    first = ManagedProcess([sys.executable, "-c", FAMILY]).start()
    second = ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"]).start()
    assert stop_everything() >= 2
    assert not alive(first.pid) and not alive(second.pid)
    assert len(RUNNING) == 0
