"""torchrun across nodes on any executor: `--nnodes N`, c10d rendezvous hosted by node 0.

Node 0 hosts the rendezvous store (`is_host`, never guessed from host names: namespaces and containers share
or fake them) on a port the executor assigns; every node names its own address (`--local-addr`) so the workers'
store address is reachable from the other nodes. TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 as for single-node runs
(elastic restarts hang on this platform without it). GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME pin the
collectives to the interface the spec names (`acceptance.hosts.socketIfname`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dcforge.executors.base import (ExecutionOutcome, Executor, ExecutorError, NodeStatus, Resources, Role,
                                    StatusCallback, VolumePurpose, Workload, pool_machines)
from dcforge.steps.torchrun import TORCHRUN_ENV, socket_env

RENDEZVOUS_PORT = "rendezvous"


@dataclass(frozen=True)
class Elastic:
    """torchrun `--nnodes min:max`: the job survives the loss of nodes down to `min_nodes`.

    After a worker fails, every surviving agent restarts its workers (`max_restarts` times at most) and meets
    the others at a new rendezvous round. That round can only start once the dead node is dropped from the
    rendezvous state: when its heartbeat is `keep_alive_interval_s` × `keep_alive_max_attempt` old (torchrun's
    defaults: 5 s × 3). Once `min_nodes` have joined, the round waits `last_call_s` more for others (default
    30 s), then starts with those present. Node 0 hosts the rendezvous store: losing it ends the job."""

    min_nodes: int
    max_restarts: int = 1
    last_call_s: int = 30
    keep_alive_interval_s: int = 5
    keep_alive_max_attempt: int = 3

    def rdzv_conf(self) -> str:
        return (f",last_call_timeout={self.last_call_s},keep_alive_interval={self.keep_alive_interval_s}"
                f",keep_alive_max_attempt={self.keep_alive_max_attempt}")


@dataclass(frozen=True)
class TorchrunJob:
    script: str
    """A file in workloads/."""
    args: tuple[str, ...]
    """Script arguments; templates (`{volume[results]}/sweep.json`)."""
    nnodes: int
    nproc_per_node: int = 2
    socket_ifname: str | None = None
    rendezvous_timeout_s: int = 60
    timeout_s: float = 300.0
    result_files: tuple[str, ...] = ()
    """Files the script writes under the results volume (rank 0 only, or every node): read back per node."""
    elastic: Elastic | None = None
    """None: exactly `nnodes`, and the first lost node ends the run."""
    collect_files: tuple[str, ...] = ()
    """Files (templates, on the shared checkpoints volume) each node copies into its results volume when torchrun
    ends (`dcforge.executors.collect`): records every node appended that must outlive a lost pod."""


@dataclass
class TorchrunRun:
    outcome: ExecutionOutcome
    results: dict[int, dict[str, bytes]] = field(default_factory=dict)
    """Node index -> result file name -> content, for the files that node wrote."""
    api_requests: int | None = None
    """Kubernetes API requests the execution made (the kubernetes executor watches rather than polls); None
    elsewhere."""

    def result(self, name: str) -> tuple[int, bytes]:
        """The first node that wrote `name` (rank 0's node for rank-0-only outputs)."""
        for index in sorted(self.results):
            if name in self.results[index]:
                return index, self.results[index][name]
        raise ExecutorError(f"no node wrote {name}")


def torchrun_workload(name: str, job: TorchrunJob, resources: Resources | None = None) -> Workload:
    """`resources`: what each node asks for (the kubernetes executor's `node_resources`: a whole machine of the
    pool); the local and hosts executors place nodes on machines that are theirs anyway."""
    run_id = f"{name}-{uuid.uuid4().hex[:8]}"
    elastic = job.elastic
    nnodes = f"{elastic.min_nodes}:{job.nnodes}" if elastic else str(job.nnodes)
    command = ("{python}", "-m", "torch.distributed.run", f"--nnodes={nnodes}",
               f"--nproc-per-node={job.nproc_per_node}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint={{leader_address}}:{{port[{RENDEZVOUS_PORT}]}}", f"--rdzv-id={run_id}",
               f"--rdzv-conf=is_host={{is_leader}},join_timeout={job.rendezvous_timeout_s}"
               + (elastic.rdzv_conf() if elastic else ""),
               "--local-addr={node_address}", f"--max-restarts={elastic.max_restarts if elastic else 0}",
               "--monitor-interval=0.2", f"workloads/{job.script}", *job.args)
    if job.collect_files:
        files = [part for path in job.collect_files for part in ("--file", path)]
        command = ("{python}", "-m", "dcforge.executors.collect", "--into", "{volume[results]}", *files, "--",
                   *command)
    env = {**TORCHRUN_ENV, **socket_env(job.socket_ifname)}
    role = Role("torchrun", command, env=env, nodes=job.nnodes, resources=resources or Resources(),
                ports=(RENDEZVOUS_PORT,), min_nodes=elastic.min_nodes if elastic else None)
    return Workload(name, (role,), volumes=(VolumePurpose.SCRATCH, VolumePurpose.CHECKPOINTS,
                                            VolumePurpose.RESULTS), timeout_s=job.timeout_s)


def run_torchrun_job(executor: Executor, name: str, job: TorchrunJob, run_dir: Path,
                     on_status: StatusCallback | None = None) -> TorchrunRun:
    """Start every node, wait (the first failure stops the rest), read back the result files of each node;
    every process is gone when this returns or raises."""
    machines = pool_machines(executor)
    workload = torchrun_workload(name, job, machines.node_resources if machines is not None else None)
    with executor.start(workload, run_dir) as execution:
        outcome = execution.wait(job.timeout_s, on_status)
        run = TorchrunRun(outcome, api_requests=getattr(execution, "api_requests", None))
        for node in outcome.nodes:
            for file_name in job.result_files:
                try:
                    run.results.setdefault(node.index, {})[file_name] = execution.read_result(
                        node.role, node.index, file_name)
                except (OSError, ExecutorError):
                    pass  # rank-0-only outputs exist on one node
        return run


def node_records(nodes: list[NodeStatus], relative=lambda path: str(path)) -> list[dict]:
    """One JSON-able row per node for a CheckResult's details."""
    return [{"node": node.index, "host": node.host, "address": node.address, "state": node.state.value,
             "exit_code": node.exit_code, "reason": node.reason,
             "log": relative(node.log_path) if node.log_path else None,
             **({"kubernetes_node": node.kubernetes_node} if node.kubernetes_node else {})} for node in nodes]
