"""ManagedProcess: the whole process group dies with the check, promptly, and timeouts are enforced."""

from __future__ import annotations

import os
import sys
import time

import pytest

from dcforge.harness.processes import ManagedProcess, run_bounded

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
