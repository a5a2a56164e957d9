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
from dcforge.checks.train import train_config_error
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
    """Target kubernetes: the faulted run as one pod on a machine of the acceptance pool — the rank dies inside
    the pod, torchrun restarts the workers there, and they resume from checkpoints on a claim of the checkpoints
    StorageClass — judged by `judge_recovery`; on a pool without GPUs (deterministic kernels) the uninterrupted
    run is a second pod for the bitwise comparison."""
    from dcforge.checks.node_steps import CLAIM_VOLUMES, NODE_ENV, Step, node_torchrun
    from dcforge.checks.on_pool import run_on_pool
    from workloads.records import read_records

    nproc = config.nproc()
    faulted, reference = training_runs(ctx, config, nproc, "{volume[checkpoints]}/train_failover",
                                       "{volume[results]}")

    def judge(data: bytes, recovery: bool) -> CheckResult:
        judged = CheckResult(TrainFailoverCheck.name, declared=TrainFailoverCheck.metrics)
        records = read_records(data.decode().splitlines(), *TRAIN_RECORDS)
        if recovery:
            judge_recovery(judged, records, config)
        judged.details["final_params_sha256"] = final_hash(records)
        return judged

    result = run_on_pool(ctx, TrainFailoverCheck.name, Step(
        "faulted", node_torchrun("train.py", faulted.to_args(), nproc, max_restarts=1), "faulted.jsonl",
        lambda data: judge(data, recovery=True), NODE_ENV, CLAIM_VOLUMES), executor)
    deterministic = not executor.node_resources.gpus  # CPU kernels; GPU ones are not bitwise reproducible
    if config.compare_with_uninterrupted and deterministic and "final_params_sha256" in result.details:
        uninterrupted = run_on_pool(ctx, TrainFailoverCheck.name, Step(
            "reference", node_torchrun("train.py", reference.to_args(), nproc), "reference.jsonl",
            lambda data: judge(data, recovery=False), NODE_ENV), executor)
        if "final_params_sha256" not in uninterrupted.details:  # the reference pod did not run through
            return result.fail(f"the uninterrupted run: {uninterrupted.reason}")
        compare_final(result, uninterrupted.details["final_params_sha256"], result.details["final_params_sha256"])
    result.details["nproc"] = nproc
    return result


def final_hash(records: list[Record]) -> str | None:
    finals = [r for r in records if isinstance(r, TrainFinal)]
    return finals[-1].params_sha256 if finals else None


def judge_recovery(result: CheckResult, records: list[Record], config: FailoverTrainingConfig) -> None:
    """Steps lost and time to resume from the faulted run's records (TrainStart/TrainStep/TrainFault/...)."""
    faults = [r for r in records if isinstance(r, TrainFault)]
    steps = [r for r in records if isinstance(r, TrainStep)]
    restarted = [r for r in records if isinstance(r, TrainStart) and r.attempt > 0]
    if not faults:
        result.fail("the fault was never injected (no fault event)")
        return
    if not restarted:
        result.fail("torchrun did not restart the workers after the fault")
        return
    fault, restart = faults[0], restarted[0]
    resumed = restart.resumed_from_step
    after = [r for r in steps if r.attempt > 0]
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
