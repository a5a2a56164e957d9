"""How long a child process lives: it dies with its parent, and its process group dies with the harness.

Three kernel-level pieces, standard library only (gunicorn replicas, torchrun workers and the orphan reaper import
this module in processes that load nothing else of dcforge):

- `die_with_parent`: Linux PR_SET_PDEATHSIG. A process normally outlives a parent that was SIGKILLed (it is
  re-parented to init and keeps running); with it the kernel signals the process when its parent dies. The
  setting is per process and not inherited by its own children, so every process that can be orphaned sets it
  for itself: the harness for the children it starts, gunicorn replicas for their master, torchrun workers for
  their agent. The kernel sends the signal when the *thread* that forked the process exits: start children from
  a thread that lives as long as they should.
- `kill_group`: SIGTERM a process group, SIGKILL what is left after a grace period.
- the orphan reaper (`python -m dcforge.process_lifetime`): a small process that reads "+PGID" / "-PGID" lines
  from the harness on its stdin and, when that pipe closes -- the harness exited, crashed or was SIGKILLed --
  kills every group still listed. It covers the grandchildren that PR_SET_PDEATHSIG cannot reach.

Elsewhere than Linux, `die_with_parent` does nothing and the reaper is the only guard.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1
REAPER_GRACE_S = 3.0
"""How long the reaper lets orphaned groups handle SIGTERM before SIGKILL: short, nobody waits for them."""

_prctl = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, never inside a freshly forked child
    except (OSError, AttributeError):
        _prctl = None


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent dies.

    `parent_pid`: the parent that started this process. If it died before this call (the call races with the
    fork), this process was already re-parented and exits at once instead of running orphaned.
    """
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(128 + int(sig))


def die_with_torchrun_agent() -> None:
    """In a torchrun worker: die with the agent. torchrun starts every worker in a session of its own, so
    stopping the agent's process group does not reach the workers, and a SIGKILLed agent would leave them
    running. Outside torchrun (TORCHELASTIC_RUN_ID unset) nothing changes."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        parent = os.getppid()
        if parent == 1:  # the agent is already gone
            os._exit(128 + signal.SIGKILL)
        die_with_parent(parent)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, grace_s: float = 5.0, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM then SIGKILL a process group, returning as soon as the group is empty.

    `reap` (the leader's Popen.poll) collects an exited leader: an unreaped zombie still counts as a member of
    its group, so without it every stop would wait the whole grace period.
    """
    kill_groups([pgid], grace_s, reap)


def kill_groups(pgids: Iterable[int], grace_s: float, reap: Callable[[], object] | None = None) -> None:
    """`kill_group` for several groups at once: one grace period for all of them, not one each."""
    remaining = set(pgids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in list(remaining):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                remaining.discard(pgid)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 1.0)
        while remaining and time.monotonic() < deadline:
            if reap is not None:
                reap()
            remaining = {pgid for pgid in remaining if group_exists(pgid)}
            if remaining:
                time.sleep(0.05)
        if not remaining:
            return


def reap_orphans(lines: Iterable[str], grace_s: float = REAPER_GRACE_S) -> None:
    """The reaper's loop: track "+PGID" / "-PGID" lines until the input ends, then kill the groups left."""
    groups: set[int] = set()
    for line in lines:
        line = line.strip()
        if len(line) > 1 and line[0] in "+-" and line[1:].isdigit():
            (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    kill_groups(groups, grace_s)


if __name__ == "__main__":
    # Its own session already (the harness starts it so): terminal signals meant for dcforge do not reach it.
    # SIGTERM keeps its default: whoever sends it wants the reaper gone.
    for ignored in (signal.SIGINT, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    reap_orphans(sys.stdin)
