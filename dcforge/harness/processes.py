"""Child processes that never outlive the check -- nor the run -- that started them.

The lifecycle every executor follows (local processes here; SSH sessions and Kubernetes objects register the same
way, as a `Stoppable` in `RUNNING`, and bring their own guard for step 4):

1. Start: a child runs in a session (process group) of its own, so a signal meant for dcforge (a Ctrl-C in the
   terminal) does not reach it and the whole group -- gunicorn replicas, Locust workers, torchrun's agent -- can
   be stopped at once. It is registered in `RUNNING` until it is stopped.
2. End, failure, check timeout: the `with` block that started the child stops it: SIGTERM to the group, SIGKILL
   to what is left after a grace period.
3. Terminating signal (SIGINT, SIGTERM, SIGHUP): the runner turns the signal into `Interrupted` inside the running
   check (dcforge.harness.lifecycle), so the check's `with` blocks stop what they started as in 2; then the runner
   calls `stop_everything()` for whatever is still registered.
4. dcforge itself killed (SIGKILL, OOM killer): no code of this process runs any more, so the kernel and a
   separate process end the children: each group leader has PR_SET_PDEATHSIG=SIGKILL, and the orphan reaper kills
   every group still registered once dcforge's end of its pipe closes (dcforge.process_lifetime). Long-lived
   processes whose children leave the group (torchrun puts each worker in a session of its own) make their
   children die with them the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

from dcforge.process_lifetime import die_with_parent, kill_group

__all__ = ["ManagedProcess", "RUNNING", "Stoppable", "kill_group", "run_bounded", "stop_everything"]

DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
"""Held back while a child is started and registered: an interruption in between would leak it."""


class Stoppable(Protocol):
    """Something a run started and must end: a local process group, later an SSH session or Kubernetes object."""

    def stop(self) -> None:
        """End it and wait until it has ended (bounded); safe to call twice."""
        ...


class RunningChildren:
    """Every child of this process that has not been stopped yet, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: list[Stoppable] = []

    def add(self, child: Stoppable) -> None:
        with self._lock:
            self._children.append(child)

    def discard(self, child: Stoppable) -> None:
        with self._lock:
            if child in self._children:
                self._children.remove(child)

    def __len__(self) -> int:
        with self._lock:
            return len(self._children)

    def stop_everything(self) -> int:
        """Stop every registered child, newest first (a load generator before the server it loads). Returns how
        many there were."""
        with self._lock:
            children = list(reversed(self._children))
        for child in children:
            child.stop()
            self.discard(child)
        return len(children)


RUNNING = RunningChildren()


def stop_everything() -> int:
    """Stop every child this process started and has not stopped yet (step 3 of the lifecycle)."""
    return RUNNING.stop_everything()


class OrphanReaper:
    """dcforge's end of the orphan reaper (step 4): started with the first child, told of every group."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._popen: subprocess.Popen | None = None

    def watch(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
            self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)
            self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        for _attempt in range(2):  # a reaper that died (someone killed it) is replaced, with the groups so far
            if self._popen is None or self._popen.poll() is not None:
                self._popen = self._start()
                line = "".join(f"+{pgid}\n" for pgid in self._groups)
            stdin: IO[str] = self._popen.stdin  # type: ignore[assignment]
            try:
                stdin.write(line)
                stdin.flush()
                return
            except (BrokenPipeError, OSError):
                self._popen = None

    @staticmethod
    def _start() -> subprocess.Popen:
        # Its own session: a Ctrl-C or hang-up meant for dcforge must not end the reaper before dcforge.
        return subprocess.Popen([sys.executable, "-m", "dcforge.process_lifetime"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)


REAPER = OrphanReaper()


@contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP back (they are delivered when the block ends), main thread or not."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _child_setup(parent_pid: int):
    def setup() -> None:  # runs in the child between fork and exec
        signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED_SIGNALS)  # the mask survives exec: undo the deferral
        die_with_parent(parent_pid)
    return setup


class ManagedProcess:
    """`with ManagedProcess([...]) as proc:` -- Popen in a new session, group-killed on exit, never orphaned."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 log_path: str | Path | None = None, grace_s: float = 5.0):
        self.args = list(args)
        self.env = env
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path else None
        self.grace_s = grace_s
        self.popen: subprocess.Popen | None = None
        self._log_file = None

    def start(self) -> "ManagedProcess":
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
        output = self._log_file if self._log_file else subprocess.DEVNULL
        with signals_deferred():
            self.popen = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=output,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, preexec_fn=_child_setup(os.getpid()))
            RUNNING.add(self)
            REAPER.watch(self.popen.pid)
        return self

    def __enter__(self) -> "ManagedProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.popen is not None, "process not started"
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def wait(self, timeout: float) -> int:
        """Wait for exit; on timeout the group is killed and TimeoutError raised."""
        assert self.popen is not None, "process not started"
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"{Path(self.args[0]).name} did not finish within {timeout:.0f} s") from None

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after the grace period. Idempotent."""
        if self.popen is not None:
            kill_group(self.popen.pid, self.grace_s, reap=self.popen.poll)
            try:
                self.popen.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                pass
            RUNNING.discard(self)
            REAPER.forget(self.popen.pid)
        if self._log_file:
            self._log_file.close()
            self._log_file = None


def run_bounded(args: Sequence[str], *, timeout_s: float, env: dict[str, str] | None = None,
                cwd: str | Path | None = None, log_path: str | Path | None = None) -> int:
    """Run a command to completion with a hard timeout; the whole process group dies on timeout or error."""
    with ManagedProcess(args, env=env, cwd=cwd, log_path=log_path) as proc:
        return proc.wait(timeout_s)
