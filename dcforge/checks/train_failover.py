"""`train_failover`: a rank dies mid-training; torchrun restarts the job and it resumes from its last checkpoint.

docs/metrics.md: steps lost = failure step − resumed step; time to resume = first completed step after the restart
− the failure. On CPU the final parameters must equal those of an uninterrupted run with the same seed, bit for
bit: the checkpoint restored everything (weights, optimizer moments, LR schedule, data position, RNG, step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, model_validator

from dcforge.checks._torchrun import ModelTorchCheckConfig, run_torchrun
from dcforge.checks.on_pool import run_check_on_pool
from dcforge.checks.train import settings_error, train_config_error
from dcforge.harness.check import CheckContext, runs_on_pool
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, Plot, Series
from workloads.records import (TRAIN_RECORDS, Record, TrainCheckpointSaved, TrainFault, TrainFinal, TrainStart,
                               TrainStep, read_records_file)

if TYPE_CHECKING:
    from workloads.train_config import TrainConfig


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


class TrainFailoverConfig(FailoverTrainingConfig):
    min_nproc: ClassVar[int] = 2
    """One rank dies and another must survive it."""

    fail_rank: int = Field(default=1, ge=0)
    """The rank that dies."""
    compare_with_uninterrupted: bool = True
    """Also run without the fault and require bit-identical final parameters (CPU only: GPU kernels are not
    deterministic by default)."""


class TrainFailoverCheck:
    name = "train_failover"
    description = "Kills one training rank mid-run; torchrun restarts; resume step, steps lost, time to resume."
    Config = TrainFailoverConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/checks/on_pool.py)
    metrics = (
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

    def run(self, ctx: CheckContext, config: TrainFailoverConfig) -> CheckResult:
        if runs_on_pool(self, ctx.env.spec):  # target kubernetes: a machine of the acceptance pool
            return run_check_on_pool(ctx, self.name, config)
        import torch

        result = CheckResult(self.name, declared=self.metrics)
        nproc = config.nproc()
        workdir = ctx.artefact_dir(self.name)
        faulted, reference = training_runs(ctx, config, nproc, str(workdir / "checkpoints"), str(workdir))
        for leftover in (workdir / "faulted.jsonl", workdir / "reference.jsonl"):
            leftover.unlink(missing_ok=True)
        if (workdir / "checkpoints").exists():  # a previous run's checkpoints would be resumed from
            import shutil

            shutil.rmtree(workdir / "checkpoints")
        run_torchrun(ctx, "train.py", faulted.to_args(), nproc=nproc, log_path=workdir / "faulted.log",
                     max_restarts=1)
        records = read_records_file(workdir / "faulted.jsonl", *TRAIN_RECORDS)
        result.artefacts.update(metrics=ctx.relative(workdir / "faulted.jsonl"),
                                torchrun_log=ctx.relative(workdir / "faulted.log"))
        judge_recovery(result, records, config)

        deterministic = not torch.cuda.is_available()
        if config.compare_with_uninterrupted and deterministic:
            run_torchrun(ctx, "train.py", reference.to_args(), nproc=nproc, log_path=workdir / "reference.log")
            compare_final(result, final_hash(read_records_file(workdir / "reference.jsonl", TrainFinal)),
                          final_hash(records))
        result.details["nproc"] = nproc
        return result


def training_runs(ctx: CheckContext, config: TrainFailoverConfig, nproc: int, checkpoint_dir: str,
                  metrics_dir: str) -> tuple[TrainConfig, TrainConfig]:
    """The faulted run (checkpoints in `checkpoint_dir`, resumed after the fault) and the uninterrupted one, their
    records in `metrics_dir`/faulted.jsonl and reference.jsonl; paths may be executor templates. A setting the
    faulted run cannot take is one line naming the key."""
    from workloads.train_config import TrainConfig, TrainConfigError

    common = dict(preset=config.preset, seq_len=config.seq_len, global_batch_size=config.global_batch_size,
                  steps=config.steps, log_every=0)
    faulted = TrainConfig(**common, checkpoint_dir=checkpoint_dir, checkpoint_every=config.checkpoint_every,
                          metrics_file=f"{metrics_dir}/faulted.jsonl", fail_at_step=config.fail_at_step,
                          fail_rank=config.fail_rank, resume=True)
    try:
        faulted.validate(nproc)
    except TrainConfigError as error:
        raise train_config_error(ctx, TrainFailoverCheck.name, error) from None
    return faulted, TrainConfig(**common, metrics_file=f"{metrics_dir}/reference.jsonl")


def compare_final(result: CheckResult, expected: str | None, actual: str | None) -> None:
    """The uninterrupted run's final parameters (`expected`) against the faulted run's, bit for bit."""
    match = expected is not None and expected == actual
    result.add_metric("final_params_match", 1.0 if match else 0.0)
    result.details.update(final_params_sha256=actual, reference_params_sha256=expected)
    if not match:
        result.fail("final parameters differ from an uninterrupted run with the same seed: the resume "
                    "did not restore the full training state")


def failover_on_pool(ctx: CheckContext, config: TrainFailoverConfig, executor) -> CheckResult:
    """Target kubernetes: the training pod itself is lost. It holds after step failAtStep − 1 (`hold_at_step`, its
    checkpoint written), the check deletes it, the Job replaces it (`Role.replacements`), and the new pod's torchrun
    resumes from the checkpoints on a claim of the checkpoints StorageClass; judged by `judge_recovery`. On a pool
    without GPUs (deterministic kernels) the uninterrupted run is a second pod for the bitwise comparison."""
    from dcforge.checks.node_steps import NODE_ENV, Step, node_torchrun
    from dcforge.checks.on_pool import run_on_pool
    from workloads.records import read_records

    nproc = config.nproc()
    claim = "{volume[checkpoints]}/train_failover"
    faulted = held_run(ctx, config, nproc, claim)
    _, reference = training_runs(ctx, config, nproc, claim, "{volume[results]}")
    result = run_with_pod_loss(ctx, config, executor, faulted, nproc)

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult(TrainFailoverCheck.name, declared=TrainFailoverCheck.metrics)
        judged.details["final_params_sha256"] = final_hash(read_records(data.decode().splitlines(), TrainFinal))
        return judged

    deterministic = not executor.node_resources.gpus  # CPU kernels; GPU ones are not bitwise reproducible
    if config.compare_with_uninterrupted and deterministic and result.details.get("final_params_sha256"):
        uninterrupted = run_on_pool(ctx, TrainFailoverCheck.name, Step(
            "reference", node_torchrun("train.py", reference.to_args(), nproc), "reference.jsonl", judge,
            NODE_ENV), executor)
        if "final_params_sha256" not in uninterrupted.details:  # the reference pod did not run through
            return result.fail(f"the uninterrupted run: {uninterrupted.reason}")
        compare_final(result, uninterrupted.details["final_params_sha256"], result.details["final_params_sha256"])
    result.details["nproc"] = nproc
    return result


def held_run(ctx: CheckContext, config: TrainFailoverConfig, nproc: int, claim: str):
    """The faulted run for a lost pod: no fault of its own, it holds after step failAtStep − 1 for the check to
    strike (so the pod is lost between two steps, its checkpoint complete), a progress line per step."""
    import dataclasses

    from workloads.train_config import TrainConfigError

    faulted, _ = training_runs(ctx, config, nproc, claim, claim)
    held = dataclasses.replace(faulted, fail_at_step=None, hold_at_step=config.fail_at_step - 1, log_every=1)
    try:
        held.validate(nproc)
    except TrainConfigError as error:
        raise settings_error(ctx, TrainFailoverCheck.name, "failAtStep", f"failAtStep {config.fail_at_step}: "
                             f"the pod is deleted after the step before it ({error})") from None
    return held


def run_with_pod_loss(ctx: CheckContext, config: TrainFailoverConfig, executor, faulted, nproc: int) -> CheckResult:
    """The faulted run as one pod whose Job may replace it once; the pod deleted when it holds; the records of both
    pods (appended on the claim, handed back by `dcforge.executors.collect`) judged by `judge_recovery`."""
    from dcforge.checks._torchrun import TORCHRUN_STOP_MARGIN_S
    from dcforge.checks.multinode import live_view, platform_failure
    from dcforge.checks.node_steps import CLAIM_VOLUMES, NODE_ENV, node_torchrun
    from dcforge.executors.base import ExecutorError, Role, Workload
    from dcforge.harness.result import Status
    from workloads.records import read_records

    result = CheckResult(TrainFailoverCheck.name, declared=TrainFailoverCheck.metrics)
    command = ("{python}", "-m", "dcforge.executors.collect", "--into", "{volume[results]}", "--file",
               faulted.metrics_file, "--", *node_torchrun("train.py", faulted.to_args(), nproc))
    role = Role("faulted", command, env=NODE_ENV, resources=executor.node_resources, replacements=1)
    timeout_s = max(1.0, ctx.remaining_s() - TORCHRUN_STOP_MARGIN_S)
    workload = Workload("node-faulted", (role,), volumes=CLAIM_VOLUMES, timeout_s=timeout_s)
    workdir = ctx.artefact_dir(TrainFailoverCheck.name)
    try:
        with executor.start(workload, workdir / "faulted") as execution:
            lost = delete_when_held(ctx, execution, faulted.hold_at_step, workdir / "faulted")
            outcome = execution.wait(timeout_s, live_view(ctx))
            data = execution.read_result("faulted", 0, "faulted.jsonl") if outcome.succeeded else None
    except ExecutorError as error:
        result.status, result.reason = Status.ERROR, str(error)
        return result
    node = outcome.nodes[0]
    result.details.update(executor=executor.name, pod=node.host, kubernetes_node=node.kubernetes_node,
                          api_requests=execution.api_requests, pods_started_s=execution.startup_s,
                          cleanup_s=execution.cleanup_s)
    if lost is None:
        return result.fail(f"the training never held after step {faulted.hold_at_step} for its pod to be deleted")
    result.details["deleted_pod"] = lost[1]
    if data is None:
        result.fail(f"the run in the replacement pod: {outcome.failure_summary()}")
        if platform_failure(outcome.nodes):
            result.status = Status.ERROR
        return result
    (workdir / "faulted.jsonl").write_bytes(data)
    result.artefacts["metrics"] = ctx.relative(workdir / "faulted.jsonl")
    records = with_pod_loss(read_records(data.decode().splitlines(), *TRAIN_RECORDS), lost[0], lost[1])
    judge_recovery(result, records, config)
    result.details["final_params_sha256"] = final_hash(records)
    return result


def when_held(ctx: CheckContext, execution, role: str, step: int, strike) -> tuple[float, str] | None:
    """Read the logs of the role's nodes until one says the training holds after `step` (rank 0's HOLD_LINE), then
    `strike()` (it returns the pod it struck). Returns (seconds from seeing the hold to the strike's end, that pod);
    None when a node ended or the time ran out first."""
    import time

    from dcforge.checks._torchrun import TORCHRUN_STOP_MARGIN_S
    from dcforge.executors.base import wait_for_log_line
    from workloads.records import HOLD_LINE

    held = wait_for_log_line(execution, role, f"{HOLD_LINE} {step}",
                             give_up=lambda: ctx.remaining_s() <= TORCHRUN_STOP_MARGIN_S)
    if held is None:
        return None
    seen = time.monotonic()
    struck = strike()
    return time.monotonic() - seen, struck


def delete_when_held(ctx: CheckContext, execution, step: int, run_dir) -> tuple[float, str] | None:
    """`when_held` for the one training pod: its log saved (the pod and its log go with the deletion), then the
    pod deleted for the Job to replace."""
    def strike() -> str:
        (status,) = execution.statuses()
        (run_dir / "faulted-0-deleted-pod.log").write_text(execution.read_log("faulted", 0))
        execution.kill_node("faulted", 0)
        ctx.log(f"deleted training pod {status.host} as it held after step {step}")
        return status.host

    return when_held(ctx, execution, "faulted", step, strike)


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
