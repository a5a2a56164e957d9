"""Run the acceptance checks of an environment, judge the SLOs, write the report after every check.

Rules (docs/slos.md): a check that errors fails the run; a skipped check is reported with its reason and never as
passed; an SLO on a metric that no check produced is an error; a run in which no check passed and no SLO was judged
verified nothing and is not a pass. Exit 0 when everything passed, 1 otherwise.
A terminating signal (Ctrl-C, SIGTERM, SIGHUP; dcforge.harness.lifecycle) keeps every result measured so far: the
report is rewritten after each check and once more on interrupt, with status `interrupted`, and the exit code is
128 + the signal number.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from dcforge.checks import load_check
from dcforge.errors import DcforgeError
from dcforge.executors.base import ExecutorError
from dcforge.harness.check import CheckContext, ClusterAccess, RunOutputs, runs_on_pool
from dcforge.harness.lifecycle import Interrupted, SignalGuard
from dcforge.harness.node import gpu_shortfall
from dcforge.harness.processes import stop_everything
from dcforge.harness.result import CheckResult, CheckSkipped, Status
from dcforge.harness.slo import SloResult, acceptance_slos, evaluate
from dcforge.spec.loader import LoadedEnvironment


NOTHING_VERIFIED = "nothing_verified"
"""The run status of a run in which nothing failed and nothing was verified either (docs/slos.md)."""


class CheckTimeout(BaseException):
    """Raised inside a check that ran past its limit. BaseException so a check's `except Exception` cannot
    swallow it; its `finally` blocks still run and stop its child processes."""


@dataclass
class RunState:
    """Everything the report is made of, updated as the run goes."""

    env: LoadedEnvironment
    report_dir: Path
    selected: list[str]
    started_at: str
    results: dict[str, CheckResult] = field(default_factory=dict)
    slo_results: list[SloResult] = field(default_factory=list)
    finished_at: str = ""
    interrupted_by: signal.Signals | None = None
    """The terminating signal that ended the run early, if one did."""
    running: str | None = None
    profile: str = ""
    """Which threshold profile filled default SLOs, and how it was chosen."""
    cluster: ClusterAccess = field(default_factory=ClusterAccess)
    """The cluster of target kubernetes (`dcforge accept --kubeconfig --context`)."""
    deploy: dict | None = None
    """What `dcforge up` did before this acceptance (dcforge.deploy.DeployResult.to_dict), else None."""

    @property
    def interrupted(self) -> bool:
        return self.interrupted_by is not None

    @property
    def passed(self) -> bool:
        return (all(r.status in (Status.PASS, Status.SKIPPED) for r in self.results.values())
                and all(s.verdict in ("pass", "skipped") for s in self.slo_results))

    @property
    def verified_something(self) -> bool:
        """Whether any check passed or any SLO was judged: a run of only skipped checks verified nothing."""
        return (any(r.status == Status.PASS for r in self.results.values())
                or any(s.verdict in ("pass", "fail") for s in self.slo_results))

    @property
    def status(self) -> str:
        """running, interrupted, fail, `nothing_verified` (nothing failed, but no check passed and no SLO was
        judged: never a pass, exit 1) or pass."""
        if self.finished_at == "":
            return "running"
        if self.interrupted:
            return "interrupted"
        if not self.passed:
            return "fail"
        return "pass" if self.verified_something else NOTHING_VERIFIED

    @property
    def status_reason(self) -> str:
        """Why the run has its status, where the status alone does not say it ('' otherwise)."""
        if self.status != NOTHING_VERIFIED:
            return ""
        skipped = sum(r.status == Status.SKIPPED for r in self.results.values())
        return (f"no check passed and no SLO was judged ({skipped} checks skipped, each with "
                "its reason)")

    @property
    def exit_code(self) -> int:
        """0 passed, 1 failed or nothing verified, 128 + signal number when a terminating signal ended the run
        (130, 143, 129)."""
        if self.interrupted_by is not None:
            return Interrupted(self.interrupted_by).exit_code
        return 0 if self.status == "pass" else 1


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def select_checks(configured: list[str], only: list[str] | None, skip: list[str] | None) -> list[str]:
    """The checks to run, in the environment's order. Unknown names are bad input (exit 2)."""
    for option, names in (("--only", only or []), ("--skip", skip or [])):
        unknown = [n for n in names if n not in configured]
        if unknown:
            raise DcforgeError(f"{option}: {', '.join(unknown)} not among this environment's checks "
                               f"({', '.join(configured)})")
    return [n for n in configured if (not only or n in only) and n not in (skip or [])]


@contextmanager
def time_limit(seconds: float):
    """Interrupt the body with CheckTimeout after `seconds` (main thread only; elsewhere the deadline in the
    context is advisory)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CheckTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(name: str, state: RunState, log: Callable[[str], None], shared: RunOutputs) -> CheckResult:
    acceptance = state.env.spec.acceptance
    timeout = acceptance.timeouts_s.get(name, acceptance.default_timeout_s)
    started = time.monotonic()
    result = CheckResult(name)
    try:
        check = load_check(name)
        config = check.Config.model_validate(acceptance.settings.get(name, {}))
        # a GPU workload on a node that shows fewer GPUs than declared fails without running: CPU numbers judged
        # against GPU SLOs would mean nothing, and a skip would let a GPU node with no GPU pass (docs/skips.md).
        # A check that runs on the acceptance pool (target kubernetes) needs the pool's GPUs, not this machine's.
        if check.requires_declared_gpus and not runs_on_pool(check, state.env.spec) and (
                shortfall := gpu_shortfall(state.env.spec)):
            result = CheckResult(name, Status.FAIL, reason=str(shortfall),
                                 details={"findings": [shortfall.finding()]})
        else:
            ctx = CheckContext(env=state.env, report_dir=state.report_dir, deadline=started + timeout,
                               results=dict(state.results), log=log, outputs=shared, cluster=state.cluster)
            with time_limit(timeout):
                result = check.run(ctx, config)
    except CheckSkipped as skipped:
        result = CheckResult(name, Status.SKIPPED, reason=str(skipped))
    except CheckTimeout:
        result = CheckResult(name, Status.ERROR, reason=f"timed out after {timeout:g} s "
                                                         f"(dcforge:acceptance.timeoutsS.{name})")
    except ValidationError as error:  # settings were validated at load time; kept for direct callers
        result = CheckResult(name, Status.ERROR, reason=f"bad settings: {error.errors()[0]['msg']}")
    except KeyboardInterrupt as error:
        interruption = Interrupted.of(error)
        result = CheckResult(name, Status.ERROR, reason=f"interrupted by {interruption.description} while running")
        result.details["interrupted_by"] = interruption.signal_name
        raise interruption from None
    except ExecutorError as error:  # the platform could not place or reach a node: its one line, not a crash
        result = CheckResult(name, Status.ERROR, reason=str(error))
    except Exception as error:  # a check that crashes is an error of the run, with its traceback kept
        result = CheckResult(name, Status.ERROR, reason=f"{type(error).__name__}: {error}")
        trace_path = state.report_dir / "artefacts" / name / "traceback.txt"
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        trace_path.write_text(traceback.format_exc())
        result.artefacts["traceback"] = str(trace_path.relative_to(state.report_dir))
    finally:
        result.name = name
        result.started_at = result.started_at or dt.datetime.fromtimestamp(
            time.time() - (time.monotonic() - started), dt.timezone.utc).isoformat(timespec="seconds")
        result.duration_s = round(time.monotonic() - started, 3)
        state.results[name] = result
    return result


def run_acceptance(state: RunState, write: Callable[[RunState], None],
                   log: Callable[[str], None] = print,
                   on_check_start: Callable[[str], None] = lambda name: None,
                   on_check_end: Callable[[CheckResult], None] = lambda result: None) -> RunState:
    """Run `state.selected` in order; `write(state)` persists the report after every step."""
    slos, state.profile = acceptance_slos(state.env)
    shared = RunOutputs()
    configured = state.env.spec.acceptance.checks
    for name in configured:
        if name not in state.selected:
            state.results[name] = CheckResult(name, Status.SKIPPED, reason="not selected (--only/--skip)")
    with SignalGuard() as signals:
        try:
            write(state)
            for name in state.selected:
                state.running = name
                on_check_start(name)
                write(state)  # the report on disk shows which check is running
                result = run_one(name, state, log, shared)
                state.running = None
                state.slo_results = [evaluate(slo, state.results) for slo in slos]
                on_check_end(result)
                write(state)
        except KeyboardInterrupt as error:
            interruption = Interrupted.of(error)
            state.interrupted_by = interruption.signum
            for name in state.selected:
                if name not in state.results:
                    state.results[name] = CheckResult(name, Status.SKIPPED,
                                                      reason=f"not run: interrupted by {interruption.description}")
        finally:
            signals.disarm()  # from here on a signal is recorded, never raised: the final report must be written
            stop_everything()  # whatever a check left running (normally nothing: checks stop what they start)
            if signals.received is not None and state.interrupted_by is None:
                state.interrupted_by = signals.received  # arrived after the last check, while finishing
            state.running = None
            state.slo_results = [evaluate(slo, state.results) for slo in slos]
            state.finished_at = utc_now()
            write(state)
    return state
