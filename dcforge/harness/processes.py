"""Child processes that never outlive the check that started them.

Every child gets its own session (process group); on exit the whole group is sent SIGTERM, then SIGKILL after a
grace period, so torchrun workers, gunicorn workers and Locust workers are all reaped even when the check fails
or the runner interrupts it on timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ManagedProcess:
    """`with ManagedProcess([...]) as proc:` -- Popen in a new session, group-killed on exit."""

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
        self.popen = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=output,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
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
        if self._log_file:
            self._log_file.close()
            self._log_file = None


def kill_group(pgid: int, grace_s: float = 5.0, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM then SIGKILL a process group, returning as soon as the group is empty.

    `reap` (the leader's Popen.poll) collects an exited leader: an unreaped zombie still counts as a member of
    its group, so without it every stop would wait the whole grace period.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline:
            if reap is not None:
                reap()
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def run_bounded(args: Sequence[str], *, timeout_s: float, env: dict[str, str] | None = None,
                cwd: str | Path | None = None, log_path: str | Path | None = None) -> int:
    """Run a command to completion with a hard timeout; the whole process group dies on timeout or error."""
    with ManagedProcess(args, env=env, cwd=cwd, log_path=log_path) as proc:
        return proc.wait(timeout_s)
