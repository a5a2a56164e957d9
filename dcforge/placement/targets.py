"""Where a multi-node check's nodes run, and how many: the executor `acceptance.target` selects (`executor_for`),
pinned to named machines of the pool where a check names nodes, and the multi-node torchrun runner (`run_nodes`).

`hosts` -> one node per SSH host of `acceptance.hosts` (docs/executors.md); `kubernetes` -> one pod of an Indexed
Job per node on the acceptance pool, in the acceptance image; `local` -> N agents on this machine over loopback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dcforge.executors.base import ExecutorError, Resources, StatusCallback, pool_machines
from dcforge.harness.check import CheckContext, settings_error
from dcforge.harness.result import CheckResult, CheckSkipped, Status
from dcforge.placement.torchrun import TorchrunJob, TorchrunRun, node_records, run_torchrun_job
from dcforge.steps.step import LOOPBACK_IFNAME, platform_failure
from dcforge.steps.torchrun import default_nproc


def executor_for(ctx: CheckContext, check: str, nodes: int | None, pin: bool = False, min_nodes: int = 2,
                 retest_quarantined: bool = False, local_nodes: int = 2):
    """The executor `acceptance.target` selects, the node count, and the socket interface for collectives.
    `pin` (checks that name nodes): on target kubernetes with a GPU pool, the executor is pinned to the pool's first
    `nodes` Ready nodes by name (`pinned_to_pool`, at least `min_nodes` of them), so node i is a named machine, as
    a host is on target hosts. `retest_quarantined` (node_level): on target kubernetes the pods tolerate the taint
    of `accept --taint-failed`, so its nodes are among the pool's and can pass again. `local_nodes`: the node
    count on target local when `nodes` is not set."""
    from dcforge.executors.hosts import HostsExecutor, SshOptions
    from dcforge.executors.inventory import acceptance_hosts
    from dcforge.executors.local import LocalExecutor

    acceptance = ctx.env.spec.acceptance
    if acceptance.target == "hosts":
        hosts = acceptance_hosts(ctx.env)
        count = nodes or len(hosts)
        if count > len(hosts):
            raise settings_error(ctx, check, "nodes", f"{count} nodes asked, acceptance.hosts has {len(hosts)}")
        options = SshOptions(connect_timeout_s=acceptance.hosts.connect_timeout_s)
        return HostsExecutor(hosts[:count], options), count, acceptance.hosts.socket_ifname
    if acceptance.target == "local":
        return LocalExecutor(), nodes or local_nodes, LOOPBACK_IFNAME
    if acceptance.target == "kubernetes":
        executor = kubernetes_executor(ctx)
        if retest_quarantined:
            from dcforge.executors.kubernetes_objects import QUARANTINE_TOLERATIONS
            executor = executor.tolerating(QUARANTINE_TOLERATIONS)
        if pin and ctx.env.spec.acceptance_pool is not None:  # no GPU pool (a CPU test cluster): pods may share
            executor = pinned_to_pool(check, executor, nodes, min_nodes)
            return executor, len(executor.nodes), None
        return executor, nodes or _pool_nodes(ctx), None
    raise CheckSkipped(f"multi-node checks run on target local, hosts or kubernetes, not {acceptance.target}")


def kubernetes_executor(ctx: CheckContext, pool: str | None = None):
    """Indexed Jobs on the acceptance pool (or `pool`) of the cluster the run was pointed at, labelled with the run
    id; a missing image is one line naming the key (accept refuses it before any check runs, see `dcforge.cli`)."""
    from dcforge.errors import ConfigError
    from dcforge.executors.kubernetes import KubernetesExecutor

    if not ctx.env.spec.acceptance.image:
        raise ConfigError(ctx.env.path, "dcforge:acceptance.image", IMAGE_MISSING)
    return KubernetesExecutor(ctx.env.spec, ctx.run_id, kubeconfig=ctx.cluster.kubeconfig,
                              context=ctx.cluster.context, pool=pool)


def pinned_to_pool(check: str, executor, nodes: int | None, min_nodes: int = 2):
    """`executor` pinned to the acceptance pool's Ready, schedulable nodes in name order, the first `nodes` of them
    (default all, at least `min_nodes`); ExecutorError (one line) when the pool has fewer."""
    names = executor.pool_nodes()
    if len(names) < (nodes or min_nodes):
        asked = (f"dcforge:acceptance.settings.{check}.nodes is {nodes}" if nodes
                 else f"it needs at least {min_nodes} node{'s' if min_nodes > 1 else ''}")
        raise ExecutorError(f"{check}: {asked}, but the acceptance pool {executor.target.pool.name} has "
                            f"{len(names)} Ready, schedulable nodes" + (f" ({', '.join(names)})" if names else ""))
    return executor.pinned(names[:nodes] if nodes else names)


IMAGE_MISSING = ("not set: target kubernetes runs the checks' workloads in the acceptance image (README: the "
                 "acceptance image); set a pinned tag or digest")


def _pool_nodes(ctx: CheckContext) -> int:
    """The acceptance pool's node count on target kubernetes, at least 2 (pods of one pool may share a node)."""
    pool = ctx.env.spec.acceptance_pool
    return max(2, pool.size if pool is not None else 0)


def machine_resources(executor) -> Resources | None:
    """What one node asks for where the executor places nodes on a pool's machines (a whole machine, the
    `PoolMachines` capability); None where it places them otherwise (this machine, SSH hosts)."""
    machines = pool_machines(executor)
    return machines.node_resources if machines is not None else None


def ranks_per_node(executor) -> int:
    """Ranks per node: one per GPU of a node (the pool's on target kubernetes, this machine's otherwise), else 1
    (the network between nodes is what is measured)."""
    placed = machine_resources(executor)
    if placed is not None:
        return placed.gpus or 1
    return default_nproc(cpu_ranks=1)


def live_view(ctx: CheckContext) -> StatusCallback:
    """The wait's status callback (called when something changed): each node's state, and why it waits."""
    return lambda statuses: ctx.log(" ".join(f"{s.host}:{s.state.value}" + (f" ({s.reason})" if s.reason else "")
                                             for s in statuses))


def run_nodes(ctx: CheckContext, check: str, job: TorchrunJob, executor, result: CheckResult) -> TorchrunRun | None:
    workdir = ctx.artefact_dir(check)
    ctx.log(f"torchrun {job.script} on {job.nnodes} nodes x{job.nproc_per_node} ({executor.name})")
    try:
        run = run_torchrun_job(executor, check, job, workdir / "nodes", on_status=live_view(ctx))
    except ExecutorError as error:
        result.status, result.reason = Status.ERROR, str(error)
        return None
    result.details["nodes"] = node_records(run.outcome.nodes, ctx.relative)
    if run.api_requests is not None:
        result.details["api_requests"] = run.api_requests  # up to the end of the wait: a watch, not polling
    for node in run.outcome.nodes:
        result.artefacts[f"log.{node.host}"] = ctx.relative(node.log_path)
    if not run.outcome.succeeded:
        result.fail(f"torchrun across {job.nnodes} nodes: {run.outcome.failure_summary()}")
        if platform_failure(run.outcome.nodes):  # not the workload's verdict: the platform could not run it
            result.status = Status.ERROR
    return run


@dataclass(frozen=True)
class AcrossNodes:
    """What a multi-node torchrun left for its check: the result file's bytes (also written to `output`), the
    ranks over all nodes, and the run's shape for the details."""

    data: bytes
    output: Path
    ranks: int
    run: TorchrunRun
    shape: dict


def run_across_nodes(ctx: CheckContext, check: str, result: CheckResult, *, nodes: int | None, nproc: int | None,
                     rendezvous_timeout_s: int, script: str, args_for: Callable[[int], Sequence[str]],
                     result_file: str) -> AcrossNodes | None:
    """torchrun `--nnodes` of `script` on the nodes `executor_for` picks (`nodes`, `nproc` ranks each: default
    `ranks_per_node`), its arguments `args_for(ranks over all nodes)`; None when it did not succeed (`result` then
    says why, `run_nodes`)."""
    executor, count, ifname = executor_for(ctx, check, nodes)
    per_node = nproc or ranks_per_node(executor)
    job = TorchrunJob(script, tuple(args_for(count * per_node)), nnodes=count, nproc_per_node=per_node,
                      socket_ifname=ifname, rendezvous_timeout_s=rendezvous_timeout_s,
                      timeout_s=max(1.0, ctx.remaining_s()), result_files=(result_file,))
    run = run_nodes(ctx, check, job, executor, result)
    if run is None or not run.outcome.succeeded:
        return None
    _, data = run.result(result_file)
    output = ctx.artefact_dir(check) / result_file
    output.write_bytes(data)
    return AcrossNodes(data, output, count * per_node, run, {"nnodes": count, "nproc_per_node": per_node,
                                                             "executor": executor.name, "socket_ifname": ifname})
