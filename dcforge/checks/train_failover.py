"""`train_failover`: a rank dies mid-training; torchrun restarts the job and it resumes from its last checkpoint.

The training runs, metrics and judge are dcforge/steps/train_failover.py's; on target kubernetes the training pod
itself is deleted on a machine of the acceptance pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from dcforge.harness.check import CheckContext, settings_error
from dcforge.harness.result import CheckResult
from dcforge.placement.pool import pool_machine, run_on_pool
from dcforge.placement.scope import single_node
from dcforge.placement.targets import live_view, machine_resources
from dcforge.steps.step import platform_failure
from dcforge.steps.torchrun import run_torchrun
from dcforge.steps.train import validated, workload_config
from dcforge.steps.train_failover import (TRAIN_FAILOVER_METRICS, FailoverTrainingConfig, compare_final, final_hash,
                                          judge_recovery, when_held, with_pod_loss)
from workloads.records import TRAIN_RECORDS, TrainFinal, read_records_file

if TYPE_CHECKING:
    from workloads.train_config import TrainConfig


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
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/placement/pool.py)
    metrics = TRAIN_FAILOVER_METRICS

    def run(self, ctx: CheckContext, config: TrainFailoverConfig) -> CheckResult:
        return single_node(ctx, self, here=lambda: self.here(ctx, config),
                           pool=lambda: failover_on_pool(ctx, *pool_machine(ctx, config)))

    def here(self, ctx: CheckContext, config: TrainFailoverConfig) -> CheckResult:
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
    common = (config.preset, config.seq_len, config.global_batch_size, config.steps)
    faulted = workload_config(*common, log_every=0, checkpoint_dir=checkpoint_dir,
                              checkpoint_every=config.checkpoint_every, metrics_file=f"{metrics_dir}/faulted.jsonl",
                              fail_at_step=config.fail_at_step, fail_rank=config.fail_rank, resume=True)
    return (validated(ctx, TrainFailoverCheck.name, faulted, nproc),
            workload_config(*common, log_every=0, metrics_file=f"{metrics_dir}/reference.jsonl"))


def failover_on_pool(ctx: CheckContext, config: TrainFailoverConfig, executor) -> CheckResult:
    """Target kubernetes: the training pod itself is lost. It holds after step failAtStep − 1 (`hold_at_step`, its
    checkpoint written), the check deletes it, the Job replaces it (`Role.replacements`), and the new pod's torchrun
    resumes from the checkpoints on a claim of the checkpoints StorageClass; judged by `judge_recovery`. On a pool
    without GPUs (deterministic kernels) the uninterrupted run is a second pod for the bitwise comparison."""
    from dcforge.steps.step import NODE_ENV, Step, node_torchrun
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

    deterministic = not machine_resources(executor).gpus  # CPU kernels; GPU ones are not bitwise reproducible
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
    from dcforge.steps.torchrun import TORCHRUN_STOP_MARGIN_S
    from dcforge.steps.step import CLAIM_VOLUMES, NODE_ENV, node_torchrun
    from dcforge.executors.base import ExecutorError, Role, Workload
    from dcforge.harness.result import Status
    from workloads.records import read_records

    result = CheckResult(TrainFailoverCheck.name, declared=TrainFailoverCheck.metrics)
    command = ("{python}", "-m", "dcforge.executors.collect", "--into", "{volume[results]}", "--file",
               faulted.metrics_file, "--", *node_torchrun("train.py", faulted.to_args(), nproc))
    role = Role("faulted", command, env=NODE_ENV, resources=machine_resources(executor), replacements=1)
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


