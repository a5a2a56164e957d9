"""Starve one Locust worker of CPU with a cgroup v1 `cpu` quota, to show the client-saturation verdict fires
(benchmarks/load_workers.py --starve, tests/integration/test_load_workers.py).

A worker limited to QUOTA of a core per CFS period runs for QUOTA x 100 ms, then waits out the rest of the period:
its 50-ms event-loop timer wakes up to ~99 ms late, which the saturation rule (loadtests/saturation.py) reports as
event-loop lag. Needs root and the cgroup v1 cpu controller; `unavailable()` says why not otherwise.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000
QUOTA = 0.01
"""Share of one core the starved worker gets."""
FIND_WORKER_S = 60.0
"""How long to wait for the workers' request logs to appear (forking on a busy machine is slow)."""


def unavailable() -> str | None:
    """Why a cpu quota cannot be set here, or None."""
    if os.geteuid() != 0:
        return "setting a cgroup cpu quota needs root"
    if not (CPU_CGROUP / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_CGROUP} (cgroup v2 or none mounted)"
    return None


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def first_worker(log_dir: Path, deadline: float) -> int:
    """The lowest pid among the Locust workers, found by their request logs (`requests-<pid>.jsonl`): a worker is
    a process whose parent (the master) also wrote one."""
    while time.monotonic() < deadline:
        pids = {int(path.stem.rsplit("-", 1)[1]) for path in log_dir.glob("requests-*.jsonl")}
        workers = sorted(pid for pid in pids if parent_pid(pid) in pids)
        if workers:
            return workers[0]
        time.sleep(0.05)
    raise RuntimeError(f"no Locust worker wrote a request log in {log_dir} within {FIND_WORKER_S:g} s")


class Starver:
    """`during(t_start, log_dir)` for run_load: moves the first worker into the quota group."""

    def __init__(self, group: Path, quota: float) -> None:
        self.group, self.quota, self.pid = group, quota, None

    def __call__(self, _t_start: float, log_dir: Path) -> None:
        self.pid = first_worker(log_dir, time.monotonic() + FIND_WORKER_S)
        (self.group / "cgroup.procs").write_text(str(self.pid))


@contextlib.contextmanager
def starve_first_worker(quota: float = QUOTA) -> Iterator[Starver]:
    """A cpu cgroup limited to `quota` of a core; yields the Starver that moves a worker into it. On exit every
    process still in it goes back to the root group and the group is removed."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    group = CPU_CGROUP / f"dcforge-starve-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(PERIOD_US * quota)))
        yield Starver(group, quota)
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # exited meanwhile
                (CPU_CGROUP / "cgroup.procs").write_text(pid)
        for _ in range(50):  # the kernel frees a group once its last task is gone
            with contextlib.suppress(OSError):
                group.rmdir()
            if not group.exists():
                break
            time.sleep(0.1)
