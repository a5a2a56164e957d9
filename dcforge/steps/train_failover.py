"""The failover training runs: a rank (or node) dies mid-training; torchrun restarts the job and it resumes from its last checkpoint.

docs/metrics.md: steps lost = failure step − resumed step; time to resume = first completed step after the restart
− the failure. On CPU the final parameters must equal those of an uninterrupted run with the same seed, bit for
bit: the checkpoint restored everything (weights, optimizer moments, LR schedule, data position, RNG, step).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dcforge.harness.check import CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.steps.torchrun import ModelTorchCheckConfig
from dcforge.harness.result import CheckResult, Plot, Series
from workloads.records import Record, TrainCheckpointSaved, TrainFault, TrainFinal, TrainStart, TrainStep

class FailoverTrainingConfig(ModelTorchCheckConfig):
    """The training run of both failover checks and where in it the fault hits."""

    seq_len: int = Field(default=64, ge=1)
    """Tokens per sequence (short: this check is about recovery, not throughput)."""
    global_batch_size: int = Field(default=4, ge=1)
    """Sequences per step over all ranks; must be divisible by nprocPerNode."""
    steps: int = Field(default=12, ge=2)
    """Steps of both runs."""
    checkpoint_every: int = Field(default=4, ge=1)
    """Checkpoint interval; no more than this many steps may be lost."""
    fail_at_step: int = Field(default=7, ge=2)
    """The step during which the fault hits: one rank is SIGKILLed (first attempt only), or a node is isolated."""

    @model_validator(mode="after")
    def _fault_inside_the_run(self) -> "FailoverTrainingConfig":
        if self.fail_at_step > self.steps:
            raise ValueError(f"failAtStep {self.fail_at_step} is after the last step {self.steps}")
        if self.checkpoint_every >= self.fail_at_step:
            raise ValueError(f"checkpointEvery {self.checkpoint_every} must be below failAtStep "
                             f"{self.fail_at_step}, or there is no checkpoint to resume from")
        return self


TRAIN_FAILOVER_METRICS = (
    MetricSpec("failure_step", "step", None, "step during which the rank (or node) was killed",
               "where the fault was injected"),
    MetricSpec("resumed_step", "step", None, "checkpoint step the restarted job loaded",
               "where training picked up again"),
    MetricSpec("steps_lost", "steps", "lower", "steps lost = failure step − resumed step",
               "training progress redone after the failure; at most checkpointEvery"),
    MetricSpec("restarts", "restarts", None, "worker group restarts by torchrun", "how often torchrun restarted"),
    MetricSpec("time_to_resume_s", "s", "lower",
               "time to resume = first completed step after restart − failure time",
               "how long training made no progress because of the failure"),
    MetricSpec("final_params_match", "bool", "higher",
               "SHA-256 of all final parameters equals the uninterrupted run's (same seed)",
               "1 when the resume restored the full training state (CPU only)"),
)


def compare_final(result: CheckResult, expected: str | None, actual: str | None) -> None:
    """The uninterrupted run's final parameters (`expected`) against the faulted run's, bit for bit."""
    match = expected is not None and expected == actual
    result.add_metric("final_params_match", 1.0 if match else 0.0)
    result.details.update(final_params_sha256=actual, reference_params_sha256=expected)
    if not match:
        result.fail("final parameters differ from an uninterrupted run with the same seed: the resume "
                    "did not restore the full training state")


def when_held(ctx: CheckContext, execution, role: str, step: int, strike) -> tuple[float, str] | None:
    """Read the logs of the role's nodes until one says the training holds after `step` (rank 0's HOLD_LINE), then
    `strike()` (it returns the pod it struck). Returns (seconds from seeing the hold to the strike's end, that pod);
    None when a node ended or the time ran out first."""
    import time

    from dcforge.steps.torchrun import TORCHRUN_STOP_MARGIN_S
    from dcforge.executors.base import wait_for_log_line
    from workloads.records import HOLD_LINE

    held = wait_for_log_line(execution, role, f"{HOLD_LINE} {step}",
                             give_up=lambda: ctx.remaining_s() <= TORCHRUN_STOP_MARGIN_S)
    if held is None:
        return None
    seen = time.monotonic()
    struck = strike()
    return time.monotonic() - seen, struck


def with_pod_loss(records: list[Record], delay_s: float, pod: str) -> list[Record]:
    """The records with the pod loss, just before the replacement pod's start (the second TrainStart): the failure
    step is one past the last step the lost pod completed; its time the lost pod's last record plus the check's
    delay from seeing the hold to the deletion (the records' clock: the pods', not this machine's)."""
    starts = [i for i, r in enumerate(records) if isinstance(r, TrainStart)]
    restart = starts[1] if len(starts) > 1 else len(records)
    last = max((r.step for r in records[:restart] if isinstance(r, TrainStep)), default=0)
    held_since = max((r.time for r in records[:restart]), default=0.0)
    return [*records[:restart], TrainFault(step=last + 1, rank=None, time=held_since + delay_s, node=pod),
            *records[restart:]]


def final_hash(records: list[Record]) -> str | None:
    finals = [r for r in records if isinstance(r, TrainFinal)]
    return finals[-1].params_sha256 if finals else None


def judge_recovery(result: CheckResult, records: list[Record], config: FailoverTrainingConfig) -> None:
    """Steps lost and time to resume from the faulted run's records (TrainStart/TrainStep/TrainFault/...)."""
    faults = [i for i, r in enumerate(records) if isinstance(r, TrainFault)]
    steps = [r for r in records if isinstance(r, TrainStep)]
    if not faults:
        result.fail("the fault was never injected (no fault event)")
        return
    # the restart: the first start after the fault -- torchrun's next attempt, or the run in a replacement pod
    restarted = [i for i, r in enumerate(records) if isinstance(r, TrainStart) and i > faults[0]]
    if not restarted:
        result.fail("the training did not start again after the fault")
        return
    fault, restart = records[faults[0]], records[restarted[0]]
    resumed = restart.resumed_from_step
    after = [r for r in records[restarted[0]:] if isinstance(r, TrainStep)]
    if resumed is None:
        result.fail("the restarted workers did not resume from a checkpoint (started from scratch)")
        resumed = 0
    steps_lost = fault.step - resumed
    expected_resume = (fault.step - 1) // config.checkpoint_every * config.checkpoint_every
    result.add_metric("failure_step", fault.step)
    result.add_metric("resumed_step", resumed)
    result.add_metric("steps_lost", steps_lost)
    result.add_metric("restarts", len(restarted))
    if resumed != expected_resume:
        result.fail(f"resumed from step {resumed}, but the newest checkpoint before the failure is step "
                    f"{expected_resume}")
    if steps_lost > config.checkpoint_every:
        result.fail(f"{steps_lost} steps lost, more than the checkpoint interval {config.checkpoint_every}")
    if after:
        result.add_metric("time_to_resume_s", after[0].time - fault.time)
    else:
        result.fail("no step completed after the restart")
    if not any(r.step == config.steps for r in steps):
        result.fail(f"the run did not reach step {config.steps} after the restart")
    timeline(result, records, fault, restart)


def timeline(result: CheckResult, records: list[Record], fault: TrainFault, restart: TrainStart) -> None:
    origin = records[0].time
    steps = [r for r in records if isinstance(r, TrainStep)]
    series = []
    for attempt in sorted({r.attempt for r in steps}):
        of_attempt = [r for r in steps if r.attempt == attempt]
        series.append(Series(f"attempt {attempt}", [r.time - origin for r in of_attempt],
                             [float(r.step) for r in of_attempt]))
    victim = f"node {fault.node} isolated" if fault.node else f"rank {fault.rank} killed"
    markers = [{"x": fault.time - origin, "label": f"{victim} at step {fault.step}"},
               {"x": restart.time - origin, "label": f"restart, resumed from step {restart.resumed_from_step}"}]
    markers += [{"x": r.time - origin, "label": f"checkpoint {r.step}"} for r in records
                if isinstance(r, TrainCheckpointSaved)]
    result.plots.append(Plot("Training failover timeline", "seconds since start", "step", series, kind="scatter",
                             markers=markers))
