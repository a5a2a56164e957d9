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

from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckResult
from dcforge.nccl_transport import record_transport
from dcforge.placement.targets import run_across_nodes
from dcforge.steps.allreduce import ALLREDUCE_METRICS, AllreduceCheckConfig, record_sweep, sweep_args
from dcforge.steps.rdma import declared_rdma_pool
from dcforge.steps.train import TRAIN_METRICS, TrainCheckConfig, summarize, train_config, validated
from workloads.records import (ALLREDUCE_RESULT_FILE, TRAIN_METRICS_FILE, AllreduceResult, TrainStep, read_records,
                               read_result)

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


class AllreduceMultinodeCheck:
    name = "allreduce_multinode"
    description = "All-reduce sweep across nodes (torchrun --nnodes): busbw between nodes, per-node records."
    Config = AllreduceMultinodeConfig
    metrics = ALLREDUCE_METRICS
    requires_declared_gpus = False  # the nodes are the hosts (target hosts), not necessarily this machine

    def run(self, ctx: CheckContext, config: AllreduceMultinodeConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        ran = run_across_nodes(
            ctx, self.name, result, nodes=config.nodes, nproc=config.nproc_per_node,
            rendezvous_timeout_s=config.rendezvous_timeout_s, script="allreduce.py", result_file=ALLREDUCE_RESULT_FILE,
            args_for=lambda ranks: (*sweep_args(config, f"{{volume[results]}}/{ALLREDUCE_RESULT_FILE}"),
                                    "--timeout-s", str(int(max(1.0, ctx.remaining_s())))))
        if ran is None:
            return result
        sweep = read_result(ran.data.decode().splitlines(), AllreduceResult, source=str(ran.output))
        record_sweep(result, sweep, ran.ranks)
        record_transport(result, sweep.environment["backend"], [(n.host, n.log_path) for n in ran.run.outcome.nodes],
                         declared_rdma_pool(ctx.env.spec))
        result.details.update(ran.shape)
        result.artefacts["sweep"] = ctx.relative(ran.output)
        return result


class TrainMultinodeCheck:
    name = "train_multinode"
    description = "Trains the bundled GPT across nodes (torchrun --nnodes, DDP): tokens/s, loss, per-node records."
    Config = TrainMultinodeConfig
    metrics = TRAIN_METRICS
    requires_declared_gpus = False  # the nodes are the hosts (target hosts), not necessarily this machine

    def run(self, ctx: CheckContext, config: TrainMultinodeConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)

        def args_for(ranks: int) -> list[str]:
            return validated(ctx, self.name, train_config(config, f"{{volume[results]}}/{TRAIN_METRICS_FILE}",
                                                          "{volume[checkpoints]}/train"), ranks).to_args()

        ran = run_across_nodes(ctx, self.name, result, nodes=config.nodes, nproc=config.nproc_per_node,
                               rendezvous_timeout_s=config.rendezvous_timeout_s, script="train.py", args_for=args_for,
                               result_file=TRAIN_METRICS_FILE)
        if ran is None:
            return result
        summarize(result, read_records(ran.data.decode().splitlines(), TrainStep), config, ran.ranks, None)
        result.details.update(ran.shape)
        result.artefacts["metrics"] = ctx.relative(ran.output)
        return result
