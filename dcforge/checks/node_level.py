"""`node_level`: the node-level workloads on every node of the pool (or a sample), in parallel, judged per node.

Each node runs, one after the other, the single-node workloads of the `system`, `train`, `allreduce` and
`checkpoint` checks (torchrun --standalone: the ranks of that node only), through the executor `acceptance.target`
selects: one single-node workload per node and step, the nodes started together. Separate workloads rather than
one role of N nodes because a role stops all its nodes at the first failure (right for a collective, wrong here:
one bad node must not cost the others' figures). Each step is judged by its check's own formulas and verdicts
(`summarize`, `record_sweep`, `record_checkpoint`, `facts_problems`); the node's figures become a row of
`details.nodes` (docs/executors.md), and the pool's `min` and `median` of each figure are the check's metrics, so
`node_level.tokens_per_s.min >= X` holds for every node. A node more than `outlierFraction` below the pool median
of a figure is an outlier (its row names the figure), even when it meets every absolute SLO; outliers and failed
nodes fail the check (docs/metrics.md#node_level).
"""

from __future__ import annotations

import statistics
from typing import Any, Literal

from pydantic import Field, field_validator

from dcforge.executors.base import Executor, NodeState
from dcforge.placement.naming import name_kubernetes_nodes
from dcforge.placement.nodes import node_executors, run_on_nodes
from dcforge.placement.pool import pool_ranks
from dcforge.placement.targets import executor_for
from dcforge.steps.allreduce import AllreduceCheckConfig, allreduce_step
from dcforge.steps.checkpoint import CheckpointCheckConfig, checkpoint_step
from dcforge.steps.stats import outliers
from dcforge.steps.step import Step
from dcforge.steps.system import SystemConfig, system_step
from dcforge.steps.train import TrainCheckConfig, train_step
from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult
from dcforge.report.nodes import node_problem

NodeWorkload = Literal["system", "train", "allreduce", "checkpoint"]
WORKLOADS: tuple[NodeWorkload, ...] = ("system", "train", "allreduce", "checkpoint")

POOL_FIGURES = ("tokens_per_s", "busbw_gbps", "save_gbps", "load_gbps")
"""Row figures judged over the pool (min, median, outliers): throughputs, higher is better, so a pool minimum
that meets an SLO means every node meets it."""


class NodeTrainConfig(TrainCheckConfig):
    """The train check's settings with per-node defaults small enough for seconds per node."""

    seq_len: int = Field(default=64, ge=1)
    steps: int = Field(default=10, ge=2)
    threads: int | None = Field(default=None, ge=1)
    """Intra-op CPU threads per rank; default the node's cores / its ranks, or on target local (where the nodes
    share this machine) the cores / every node's ranks: spinning OpenMP threads of oversubscribed cores would
    measure the contention, not the node."""


class NodeAllreduceConfig(AllreduceCheckConfig):
    max_bytes: str = "1M"
    factor: int = Field(default=4, ge=2)


class NodeCheckpointConfig(CheckpointCheckConfig):
    preset: str = "tiny"
    rounds: int = Field(default=1, ge=1)
    directory: str | None = None
    """A directory on each node (a mounted checkpoint volume); each node writes under `<directory>/<host>`.
    Default: the node's scratch volume."""


class NodeLevelConfig(CheckConfig):
    nodes: int | None = Field(default=None, ge=1)
    """Nodes: default every host of acceptance.hosts (target hosts), every Ready, schedulable node of the
    acceptance pool in name order (target kubernetes, each workload pinned to its node), or 2 on target local."""
    sample: int | None = Field(default=None, ge=1)
    """Run on this many of the nodes, spread evenly over the inventory order (deterministic, listed in the
    report's details.sampled); default every node."""
    workloads: list[NodeWorkload] = Field(default_factory=lambda: list(WORKLOADS), min_length=1)
    """Which node-level workloads each node runs, in this order."""
    outlier_fraction: float = Field(default=0.2, gt=0, lt=1)
    """A node is an outlier when a figure is below (1 − outlierFraction) × the pool median of that figure."""
    system: SystemConfig = Field(default_factory=SystemConfig)
    train: NodeTrainConfig = Field(default_factory=NodeTrainConfig)
    allreduce: NodeAllreduceConfig = Field(default_factory=NodeAllreduceConfig)
    checkpoint: NodeCheckpointConfig = Field(default_factory=NodeCheckpointConfig)

    @field_validator("workloads")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each workload at most once (got {value})")
        return value


# --- Pure parts: which nodes, the pool's figures, outliers ------------------------------------------------------

def sample_indices(total: int, sample: int | None) -> list[int]:
    """`sample` of `total` nodes spread evenly over the inventory order (racks are usually contiguous there, so a
    sample covers them); the same nodes every run, so results compare run to run."""
    if sample is None or sample >= total:
        return list(range(total))
    return [i * total // sample for i in range(sample)]


def figure_values(rows: list[dict[str, Any]], figure: str) -> dict[str, float]:
    """host -> the figure, for the rows that have it."""
    return {row["host"]: float(row[figure]) for row in rows if isinstance(row.get(figure), (int, float))}


def pool_summary(rows: list[dict[str, Any]], figure: str) -> tuple[float, str, float] | None:
    """(min, the host with the min, median) of a figure over the rows that have it; None when none has it."""
    values = figure_values(rows, figure)
    if not values:
        return None
    lowest = min(values, key=values.__getitem__)
    return values[lowest], lowest, statistics.median(values.values())


def mark_outliers(rows: list[dict[str, Any]], figures: tuple[str, ...], fraction: float) -> list[dict[str, Any]]:
    """Set `outlier` and `outlier_in` (the figures) on every row; returns the outlier rows."""
    for row in rows:
        row["outlier"], row["outlier_in"] = False, []
    by_host = {row["host"]: row for row in rows}
    for figure in figures:
        for host in outliers(figure_values(rows, figure), fraction):
            by_host[host]["outlier"] = True
            by_host[host]["outlier_in"].append(figure)
    return [row for row in rows if row["outlier"]]


def ranks_per_pool_node(config: NodeLevelConfig, executor: Executor) -> NodeLevelConfig:
    """On target kubernetes a step's ranks default to the pool's machines (`pool_ranks`), not to this machine's
    GPUs; elsewhere each step's own default stands."""
    return config.model_copy(update={name: pool_ranks(getattr(config, name), executor)
                                     for name in ("train", "allreduce", "checkpoint")})


class NodeLevelCheck:
    name = "node_level"
    description = ("system, single-node train, all-reduce and checkpoint on every node (or a sample) in parallel: "
                   "per-node figures, pool min/median, outliers.")
    Config = NodeLevelConfig
    requires_declared_gpus = False  # the nodes are the hosts (target hosts), not necessarily this machine
    metrics = (
        MetricSpec("tokens_per_s", "tokens/s/device", "higher",
                   "min / median over nodes of each node's train tokens/s per device (time-weighted over the steps "
                   "after warm-up)", "single-node training throughput; .min is the slowest node's",
                   stats=("min", "median")),
        MetricSpec("busbw_gbps", "GB/s", "higher",
                   "min / median over nodes of each node's busbw = algbw · 2(n−1)/n at the largest message size",
                   "all-reduce bus bandwidth between the ranks of one node; .min is the slowest node's",
                   stats=("min", "median")),
        MetricSpec("save_gbps", "GB/s", "higher",
                   "min / median over nodes of each node's checkpoint bytes / save wall time",
                   "checkpoint save bandwidth of one node; .min is the slowest node's", stats=("min", "median")),
        MetricSpec("load_gbps", "GB/s", "higher",
                   "min / median over nodes of each node's checkpoint bytes / load wall time",
                   "checkpoint load bandwidth of one node; .min is the slowest node's", stats=("min", "median")),
        MetricSpec("nodes", "nodes", None, "nodes the workloads ran on: every node, or the sample",
                   "how many nodes the figures cover"),
        MetricSpec("nodes_failed", "nodes", "lower",
                   "nodes where a workload failed or a single-node check's verdict did not hold",
                   "nodes that fail node-level acceptance; must be 0"),
        MetricSpec("outliers", "nodes", "lower",
                   "nodes with a figure < (1 − outlierFraction) × the pool median of that figure",
                   "nodes well below the pool, even when they meet every absolute SLO"),
    )

    def run(self, ctx: CheckContext, config: NodeLevelConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        executor, count, _ = executor_for(ctx, self.name, config.nodes, pin=True, min_nodes=1,
                                          retest_quarantined=True)
        config = ranks_per_pool_node(config, executor)
        pool = node_executors(executor, count)
        chosen = [pool[i] for i in sample_indices(len(pool), config.sample)]
        sharing = len(chosen) if executor.name == "local" else 1  # nodes on this one machine
        steps = {host: [self._step(ctx, config, name, host, sharing) for name in config.workloads]
                 for host, _ in chosen}
        workdir = ctx.artefact_dir(self.name)
        ctx.log(f"{', '.join(config.workloads)} on {len(chosen)} of {len(pool)} nodes ({executor.name})")
        rows = run_on_nodes(chosen, steps, workdir, ctx)
        for row in rows:
            row["logs"] = ctx.relative(workdir / row["host"])  # <step>/<role>-0*.log per step
        self._record(result, rows, config)
        name_kubernetes_nodes(executor, result)
        result.details.update({"pool_size": len(pool), "sampled": [name for name, _ in chosen],
                               "workloads": list(config.workloads), "executor": executor.name,
                               "outlier_fraction": config.outlier_fraction})
        result.artefacts["nodes"] = ctx.relative(workdir)
        return result

    @staticmethod
    def _record(result: CheckResult, rows: list[dict[str, Any]], config: NodeLevelConfig) -> None:
        """The node table, the pool's min and median per figure, failed nodes and outliers."""
        named = mark_outliers(rows, POOL_FIGURES, config.outlier_fraction)
        result.details["nodes"] = rows
        failed = [row for row in rows if row["state"] != NodeState.SUCCEEDED.value]
        result.add_metric("nodes", len(rows))
        result.add_metric("nodes_failed", len(failed))
        result.add_metric("outliers", len(named))
        for figure in POOL_FIGURES:
            summary = pool_summary(rows, figure)
            if summary is not None:
                lowest, host, median = summary
                result.add_metric(f"{figure}.min", lowest, context=host)
                result.add_metric(f"{figure}.median", median, context=f"{len(figure_values(rows, figure))} nodes")
        if failed:
            result.fail("failed nodes: " + "; ".join(node_problem(row) for row in failed))
        if named:
            result.fail("outliers: " + "; ".join(
                f"{row['host']} (" + ", ".join(f"{figure} {row[figure]:.3g}, median "
                                               f"{statistics.median(figure_values(rows, figure).values()):.3g}"
                                               for figure in row["outlier_in"]) + ")" for row in named))

    @staticmethod
    def _step(ctx: CheckContext, config: NodeLevelConfig, name: str, host: str, sharing: int) -> Step:
        """The command and judge of one node-level workload, from the single-node check's settings and formulas."""
        if name == "system":
            return system_step(ctx.env.spec, config.system)
        if name == "train":
            threads = config.train.threads or shared_threads(config.train.nproc(), sharing)
            return train_step(ctx, config.train, threads, f"{NodeLevelCheck.name}.train")
        if name == "allreduce":
            return allreduce_step(config.allreduce)
        # each node writes under its own folder of a shared directory; {volume[scratch]} is the node's own
        directory = f"{config.checkpoint.directory}/{host}" if config.checkpoint.directory else None
        return checkpoint_step(config.checkpoint, directory)


def shared_threads(nproc: int, sharing: int) -> int | None:
    """Intra-op threads per rank where `sharing` nodes run on one machine at once (target local: all of them):
    the cores / every node's ranks; None (the workload's default) for a machine of its own."""
    import os

    return max(1, (os.cpu_count() or 1) // (nproc * sharing)) if sharing > 1 else None
