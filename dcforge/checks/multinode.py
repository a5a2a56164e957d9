"""`allreduce_multinode` and `train_multinode`: torchrun with `--nnodes N` across nodes, c10d rendezvous on node 0.

Where the nodes run follows `acceptance.target`: `hosts` -> one node per SSH host of `acceptance.hosts`
(docs/executors.md); `kubernetes` -> one pod of an Indexed Job per node on the acceptance pool, in the acceptance
image; `local` -> N torchrun agents on this machine over loopback (the same rendezvous and
collectives, without a network between them). The figures are the single-node checks' (same formulas, same
records); details carry a `nodes` table: host, address, state and log of every node.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from dcforge.checks._rdma import declared_rdma_pool
from dcforge.checks.allreduce import AllreduceCheck, AllreduceCheckConfig, record_sweep
from dcforge.checks.train import TrainCheck, TrainCheckConfig, settings_error, summarize, train_config_error
from dcforge.executors.base import ExecutorError, NodeState, NodeStatus, StatusCallback
from dcforge.executors.torchrun import TorchrunJob, TorchrunRun, node_records, run_torchrun_job
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckResult, CheckSkipped, Status
from dcforge.nccl_transport import record_transport
from workloads.records import (ALLREDUCE_RESULT_FILE, TRAIN_METRICS_FILE, AllreduceResult, TrainStep, read_records,
                               read_result)

LOOPBACK_IFNAME = "lo"


class AllreduceMultinodeConfig(AllreduceCheckConfig):
    min_nproc: ClassVar[int] = 1  # two nodes already make a bus

    nodes: int | None = Field(default=None, ge=2)
    """Nodes (hosts) to run on; default every host of acceptance.hosts, or 2 on target local."""
    rendezvous_timeout_s: int = Field(default=60, ge=1)
    """How long nodes wait for each other at the c10d rendezvous."""
    nproc_per_node: int | None = Field(default=None)
    """Ranks per node; default one per GPU, or 1 on CPU (the network between nodes is what is measured)."""


class TrainMultinodeConfig(TrainCheckConfig):
    nodes: int | None = Field(default=None, ge=2)
    """Nodes (hosts) to run on; default every host of acceptance.hosts, or 2 on target local."""
    rendezvous_timeout_s: int = Field(default=60, ge=1)
    """How long nodes wait for each other at the c10d rendezvous."""


def executor_for(ctx: CheckContext, check: str, nodes: int | None, pin: bool = False, min_nodes: int = 2,
                 retest_quarantined: bool = False):
    """The executor `acceptance.target` selects, the node count, and the socket interface for collectives.
    `pin` (checks that name nodes): on target kubernetes with a GPU pool, the executor is pinned to the pool's first
    `nodes` Ready nodes by name (`pinned_to_pool`, at least `min_nodes` of them), so node i is a named machine, as
    a host is on target hosts. `retest_quarantined` (node_level): on target kubernetes the pods tolerate the taint
    of `accept --taint-failed`, so its nodes are among the pool's and can pass again."""
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
        return LocalExecutor(), nodes or 2, LOOPBACK_IFNAME
    if acceptance.target == "kubernetes":
        executor = kubernetes_executor(ctx)
        if retest_quarantined:
            from dcforge.remediation import QUARANTINE_TOLERATIONS
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


def default_nproc(executor) -> int:
    """Ranks per node: one per GPU of a node (the pool's on target kubernetes, this machine's otherwise), else 1."""
    placed = getattr(executor, "node_resources", None)
    if placed is not None:
        return placed.gpus or 1
    return _cpu_default_nproc()


def _cpu_default_nproc() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    return 1


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


def platform_failure(nodes: list[NodeStatus]) -> bool:
    """Whether a node failed for a reason outside the workload: never ran (not placed, image not pulled, refused at
    admission: no exit code of its own) or killed for its memory limit (the kubernetes executor's reasons), so the
    check is an error rather than a measured failure."""
    return any(node.state is NodeState.FAILED and (node.exit_code is None or ": OOMKilled" in node.reason)
               for node in nodes)


class AllreduceMultinodeCheck:
    name = "allreduce_multinode"
    description = "All-reduce sweep across nodes (torchrun --nnodes): busbw between nodes, per-node records."
    Config = AllreduceMultinodeConfig
    metrics = AllreduceCheck.metrics
    requires_declared_gpus = False  # the nodes are the hosts (target hosts), not necessarily this machine

    def run(self, ctx: CheckContext, config: AllreduceMultinodeConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        executor, nodes, ifname = executor_for(ctx, self.name, config.nodes)
        nproc = config.nproc_per_node or default_nproc(executor)
        job = TorchrunJob("allreduce.py", ("--min-bytes", config.min_bytes, "--max-bytes", config.max_bytes,
                                           "--factor", str(config.factor), "--warmup", str(config.warmup),
                                           "--iters", str(config.iterations), "--dtype", config.dtype,
                                           "--timeout-s", str(int(max(1.0, ctx.remaining_s()))),
                                           "--output", f"{{volume[results]}}/{ALLREDUCE_RESULT_FILE}"),
                          nnodes=nodes, nproc_per_node=nproc, socket_ifname=ifname,
                          rendezvous_timeout_s=config.rendezvous_timeout_s, timeout_s=max(1.0, ctx.remaining_s()),
                          result_files=(ALLREDUCE_RESULT_FILE,))
        run = run_nodes(ctx, self.name, job, executor, result)
        if run is None or not run.outcome.succeeded:
            return result
        _, data = run.result(ALLREDUCE_RESULT_FILE)
        output = ctx.artefact_dir(self.name) / ALLREDUCE_RESULT_FILE
        output.write_bytes(data)
        sweep = read_result(data.decode().splitlines(), AllreduceResult, source=str(output))
        record_sweep(result, sweep, nodes * nproc)
        record_transport(result, sweep.environment["backend"], [(n.host, n.log_path) for n in run.outcome.nodes],
                         declared_rdma_pool(ctx.env.spec))
        result.details.update({"nnodes": nodes, "nproc_per_node": nproc, "executor": executor.name,
                               "socket_ifname": ifname})
        result.artefacts["sweep"] = ctx.relative(output)
        return result


class TrainMultinodeCheck:
    name = "train_multinode"
    description = "Trains the bundled GPT across nodes (torchrun --nnodes, DDP): tokens/s, loss, per-node records."
    Config = TrainMultinodeConfig
    metrics = TrainCheck.metrics
    requires_declared_gpus = False  # the nodes are the hosts (target hosts), not necessarily this machine

    def run(self, ctx: CheckContext, config: TrainMultinodeConfig) -> CheckResult:
        from workloads.train_config import TrainConfig, TrainConfigError

        result = CheckResult(self.name, declared=self.metrics)
        executor, nodes, ifname = executor_for(ctx, self.name, config.nodes)
        nproc = config.nproc_per_node or default_nproc(executor)
        train_config = TrainConfig(preset=config.preset, seq_len=config.seq_len,
                                   global_batch_size=config.global_batch_size, steps=config.steps,
                                   parallelism=config.parallelism, compile=config.compile,
                                   metrics_file=f"{{volume[results]}}/{TRAIN_METRICS_FILE}",
                                   checkpoint_dir="{volume[checkpoints]}/train", checkpoint_every=config.steps,
                                   keep_checkpoints=1, resume=False, log_every=5)
        try:
            train_config.validate(nodes * nproc)
        except TrainConfigError as error:
            raise train_config_error(ctx, self.name, error) from None
        job = TorchrunJob("train.py", tuple(train_config.to_args()), nnodes=nodes, nproc_per_node=nproc,
                          socket_ifname=ifname, rendezvous_timeout_s=config.rendezvous_timeout_s,
                          timeout_s=max(1.0, ctx.remaining_s()), result_files=(TRAIN_METRICS_FILE,))
        run = run_nodes(ctx, self.name, job, executor, result)
        if run is None or not run.outcome.succeeded:
            return result
        _, data = run.result(TRAIN_METRICS_FILE)
        output = ctx.artefact_dir(self.name) / TRAIN_METRICS_FILE
        output.write_bytes(data)
        summarize(result, read_records(data.decode().splitlines(), TrainStep), config, nodes * nproc, None)
        result.details.update({"nnodes": nodes, "nproc_per_node": nproc, "executor": executor.name,
                               "socket_ifname": ifname})
        result.artefacts["metrics"] = ctx.relative(output)
        return result
