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
                                    StatusCallback, VolumePurpose, Workload)

RENDEZVOUS_PORT = "rendezvous"
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
"""What every torchrun an executor starts gets (the module docstring says why)."""


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


def socket_env(ifname: str | None) -> dict[str, str]:
    return {"GLOO_SOCKET_IFNAME": ifname, "NCCL_SOCKET_IFNAME": ifname} if ifname else {}


def torchrun_workload(name: str, job: TorchrunJob, resources: Resources | None = None) -> Workload:
    """`resources`: what each node asks for (the kubernetes executor's `node_resources`: a whole machine of the
    pool); the local and hosts executors place nodes on machines that are theirs anyway."""
    run_id = f"{name}-{uuid.uuid4().hex[:8]}"
    command = ("{python}", "-m", "torch.distributed.run", f"--nnodes={job.nnodes}",
               f"--nproc-per-node={job.nproc_per_node}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint={{leader_address}}:{{port[{RENDEZVOUS_PORT}]}}", f"--rdzv-id={run_id}",
               f"--rdzv-conf=is_host={{is_leader}},join_timeout={job.rendezvous_timeout_s}",
               "--local-addr={node_address}", "--max-restarts=0", "--monitor-interval=0.2",
               f"workloads/{job.script}", *job.args)
    env = {**TORCHRUN_ENV, **socket_env(job.socket_ifname)}
    role = Role("torchrun", command, env=env, nodes=job.nnodes, resources=resources or Resources(),
                ports=(RENDEZVOUS_PORT,))
    return Workload(name, (role,), volumes=(VolumePurpose.SCRATCH, VolumePurpose.CHECKPOINTS,
                                            VolumePurpose.RESULTS), timeout_s=job.timeout_s)


def run_torchrun_job(executor: Executor, name: str, job: TorchrunJob, run_dir: Path,
                     on_status: StatusCallback | None = None) -> TorchrunRun:
    """Start every node, wait (the first failure stops the rest), read back the result files of each node;
    every process is gone when this returns or raises."""
    workload = torchrun_workload(name, job, getattr(executor, "node_resources", None))
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
