"""Placement on one machine of the acceptance pool (target kubernetes): where the single-node checks `system`,
`gpu_bandwidth`, `train`, `allreduce`, `checkpoint` and `train_failover` run their step, not on the machine running
dcforge.

Each is one pod (a single-node workload through the kubernetes executor) asking for a whole machine of the pool
(`node_resources`: every GPU, half the CPUs and memory), its ranks defaulting to the pool's GPUs per node; the
command and the judge are the `Step` that `node_level` runs on every node (`dcforge/steps/`), so the
figures and verdicts are the single-node check's own. The checkpoint check writes to a claim of the spec's
checkpoints StorageClass, so its figure is the cluster's storage. The report entry names the Kubernetes node the
pod ran on (`details.kubernetes_node`) and counts the API requests of the wait (a watch, not polling).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from dcforge.steps.step import Step
    from dcforge.steps.torchrun import TorchCheckConfig
    from dcforge.harness.check import CheckContext
    from dcforge.harness.result import CheckResult
    from dcforge.spec.models import Environment

Config = TypeVar("Config", bound="TorchCheckConfig")
CPU_RANKS = 2
"""Ranks on a machine without GPUs: enough to exercise the collectives, as the checks' CPU default."""


def pool_ranks(config: Config, executor: object) -> Config:
    """`config` with its ranks defaulting to one machine the executor places rather than this machine: one per GPU
    of the pool's nodes, or two CPU ranks on a pool without GPUs. Unchanged where nprocPerNode is set, or where
    the executor places no machine of a pool (target local or hosts: the check's own default stands)."""
    from dcforge.placement.targets import machine_resources

    placed = machine_resources(executor)
    if placed is None or config.nproc_per_node:
        return config
    return config.model_copy(update={"nproc_per_node": placed.gpus or CPU_RANKS})


def pool_machine(ctx: CheckContext, config: Config) -> tuple[Config, object]:
    """`config` with its ranks defaulting to one machine of the pool (`pool_ranks`), and the executor that places
    workloads there: for a check that builds its own workload on that machine (train_failover's replaced pod)."""
    from dcforge.placement.targets import kubernetes_executor

    executor = kubernetes_executor(ctx)
    return pool_ranks(config, executor), executor


def on_a_pool_machine(ctx: CheckContext, check: str, step_for: Callable[[Config | None], Step],
                      config: Config | None = None, *, skip_without_gpus: str | None = None,
                      after=None) -> CheckResult:
    """The single-node check `check` on a machine of the pool: the step `step_for` builds for `config` (its ranks
    defaulting to the pool machine's, `pool_ranks`), run and judged by `run_on_pool`. `skip_without_gpus`: the
    reason the check is skipped on a pool whose machines have no GPUs (None: it runs there too)."""
    from dcforge.harness.result import CheckSkipped
    from dcforge.placement.targets import kubernetes_executor

    executor = kubernetes_executor(ctx)
    if skip_without_gpus and not executor.node_resources.gpus:
        raise CheckSkipped(skip_without_gpus)
    step = step_for(pool_ranks(config, executor) if config is not None else None)
    return run_on_pool(ctx, check, step, executor, after)


def transport_from_log(spec: Environment):
    """What the all-reduce adds from its pod's log: the transport NCCL used, and the RDMA rule."""
    from dcforge.nccl_transport import record_transport
    from dcforge.steps.rdma import declared_rdma_pool
    from workloads.records import AllreduceResult, read_result

    def after(judged: CheckResult, data: bytes, pod: str, log) -> None:
        backend = read_result(data.decode().splitlines(), AllreduceResult).environment["backend"]
        record_transport(judged, backend, [(pod, log)] if log else [], declared_rdma_pool(spec))
    return after


def run_on_pool(ctx: CheckContext, check: str, step: Step, executor, after=None) -> CheckResult:
    """Run `step` as one pod on the acceptance pool and judge it; a pod that could not run (unschedulable, image
    not pulled, refused at admission, OOMKilled) is the check's error in one line naming the pod and the reason,
    a workload that failed is its failure. `after(judged, data, pod, log)` adds what the pod's log says."""
    from dcforge.executors.base import ExecutorError
    from dcforge.placement.nodes import OpenExecutions, run_step
    from dcforge.placement.targets import live_view
    from dcforge.steps.torchrun import TORCHRUN_STOP_MARGIN_S
    from dcforge.harness.result import CheckResult, Status
    from workloads.records import RecordError

    workdir = ctx.artefact_dir(check)
    ctx.log(f"{check} on a machine of the acceptance pool ({executor.name})")
    failed = CheckResult(check)
    try:
        outcome, data = run_step(OpenExecutions(), executor, step, workdir,
                                 max(1.0, ctx.remaining_s() - TORCHRUN_STOP_MARGIN_S), live_view(ctx))
    except ExecutorError as error:  # a result, not raised: train_failover's second pod says which run it was
        failed.status, failed.reason = Status.ERROR, str(error)
        return failed
    where = {"executor": executor.name, "pod": outcome["host"], "kubernetes_node": outcome["kubernetes_node"],
             "api_requests": outcome["api_requests"], "pods_started_s": outcome.get("pods_started_s"),
             "cleanup_s": outcome.get("cleanup_s")}
    if data is None:
        failed.details.update(where)
        pod, reason = outcome["host"], outcome["reason"]
        # the executor's reasons for a pod that could not run name it already ("pod <name>: Unschedulable: ...")
        failed.fail(f"{step.name}: " + (reason if pod in reason else
                                        f"pod {pod} {outcome['state']}" + (f": {reason}" if reason else "")))
        if outcome["platform_failure"]:
            failed.status = Status.ERROR  # the platform could not run it: no verdict on the workload
        return failed
    (workdir / step.result_file).write_bytes(data)
    try:
        judged = step.judge(data)
    except RecordError as error:
        return failed.fail(f"{step.name}: {error}")
    judged.details.update(where)
    if after is not None:
        after(judged, data, outcome["host"], outcome["log"])
    judged.artefacts["result"] = ctx.relative(workdir / step.result_file)
    if outcome["log"] is not None:
        judged.artefacts["log"] = ctx.relative(outcome["log"])
    return judged
