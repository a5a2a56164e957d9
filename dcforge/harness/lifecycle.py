"""Every terminating signal ends a run the same way: SIGINT (Ctrl-C), SIGTERM (a cancelled CI job, timeout(1),
systemd, Kubernetes deleting the pod) and SIGHUP (the terminal went away).

While a run is guarded, the first of them raises `Interrupted` in the main thread, wherever it is: the running
check unwinds through its `finally`/`with` blocks (which stop its child processes, dcforge.harness.processes),
the runner stops whatever is left, records the check as interrupted by that signal and finalizes the report;
dcforge then exits with 128 + the signal number (130, 143, 129). Later signals are recorded but raise nothing:
the clean-up after the first one is bounded (a grace period, then SIGKILL) and must not itself be cut short.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

TERMINATING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A terminating signal arrived. A KeyboardInterrupt, so that code which already cleans up on Ctrl-C does
    the same for every signal, and so that a check's `except Exception` cannot swallow it."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)

    @classmethod
    def of(cls, error: KeyboardInterrupt) -> "Interrupted":
        """The interruption a KeyboardInterrupt stands for: a plain one is Python's own SIGINT."""
        return error if isinstance(error, Interrupted) else cls(signal.SIGINT)

    @property
    def signal_name(self) -> str:
        return self.signum.name

    @property
    def description(self) -> str:
        return "SIGINT (Ctrl-C)" if self.signum == signal.SIGINT else self.signum.name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class SignalGuard:
    """`with SignalGuard() as guard:` turns the first terminating signal into `Interrupted` (see the module).

    Only the main thread can install signal handlers; elsewhere the guard does nothing.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._armed = True
        self._previous: dict[int, object] = {}

    def disarm(self) -> None:
        """From now on signals are only recorded: the run is writing its final report."""
        self._armed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signal.Signals(signum)
        if self._armed:
            raise Interrupted(signum)

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in TERMINATING_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
