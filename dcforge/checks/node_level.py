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

import shutil
import statistics
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from dcforge.checks._torchrun import TORCHRUN_STOP_MARGIN_S, torchrun_command
from dcforge.checks.allreduce import AllreduceCheck, AllreduceCheckConfig, record_sweep, sweep_args
from dcforge.checks.checkpoint import CheckpointCheck, CheckpointCheckConfig, checkpoint_args, record_checkpoint
from dcforge.checks.multinode import LOOPBACK_IFNAME, executor_for
from dcforge.checks.slow_node import SlowNodeCheck, outliers
from dcforge.checks.system import SystemCheck, SystemConfig, facts_problems, record_facts
from dcforge.checks.train import TrainCheck, TrainCheckConfig, summarize, train_config_error
from dcforge.executors.base import (Execution, Executor, ExecutorError, NodeState, Resources, Role, VolumePurpose,
                                    Workload)
from dcforge.executors.torchrun import TORCHRUN_ENV, socket_env
from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, CheckSkipped, Status
from dcforge.report.nodes import node_problem
from workloads.records import (ALLREDUCE_RESULT_FILE, CHECKPOINT_RESULT_FILE, SYSTEM_FACTS_FILE, TRAIN_METRICS_FILE,
                               AllreduceResult, CheckpointResult, RecordError, SystemFacts, TrainStep, read_records,
                               read_result)

NodeWorkload = Literal["system", "train", "allreduce", "checkpoint"]
WORKLOADS: tuple[NodeWorkload, ...] = ("system", "train", "allreduce", "checkpoint")

ROW_FIGURES: dict[str, tuple[str, ...]] = {"system": ("cpu_count", "memory_gi", "gpu_count"),
                                           "train": ("tokens_per_s",), "allreduce": ("busbw_gbps",),
                                           "checkpoint": ("save_gbps", "load_gbps")}
"""The metrics of each step's single-node result that become columns of the node's row."""
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


@dataclass(frozen=True)
class Step:
    """One node-level workload: the command a node runs, the result file it writes, and how it is judged."""

    name: str
    command: tuple[str, ...]
    result_file: str
    judge: Callable[[bytes], CheckResult]
    """The step's single-node result, by the single-node check's own formulas and verdicts."""
    env: Mapping[str, str] = field(default_factory=dict)


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
    """On a pool of GPU machines (target kubernetes) a step's ranks default to the pool's GPUs per node, not to
    this machine's GPUs; elsewhere, and on a CPU pool, each step's own default stands."""
    placed = getattr(executor, "node_resources", None)
    if placed is None or not placed.gpus:
        return config
    return config.model_copy(update={
        name: sub.model_copy(update={"nproc_per_node": sub.nproc_per_node or placed.gpus})
        for name in ("train", "allreduce", "checkpoint") for sub in [getattr(config, name)]})


# --- Running the steps on a node ---------------------------------------------------------------------------------

def node_executors(executor: Executor, count: int) -> list[tuple[str, Executor]]:
    """(name, an executor placing one node there) for each of the first `count` nodes."""
    from dcforge.executors.hosts import HostsExecutor
    from dcforge.executors.local import LocalExecutor

    if isinstance(executor, HostsExecutor):
        return [(host.name, HostsExecutor([host], executor.options)) for host in executor.hosts[:count]]
    if isinstance(executor, LocalExecutor):
        return [(f"local-{i}", executor) for i in range(count)]
    if getattr(executor, "nodes", None):  # kubernetes, pinned to the pool's nodes by name (`executor_for`)
        return [(node, executor.pinned([node])) for node in executor.nodes[:count]]
    # an unpinned kubernetes executor: the spec declares no GPU pool, so there are no nodes to name
    raise CheckSkipped(f"node_level on target {executor.name} pins one pod to each node of the acceptance pool, "
                       "and the spec declares no GPU pool (dcforge:gpuPools)")


class OpenExecutions:
    """The executions the node threads have open. An interruption (Ctrl-C, the check's time limit) arrives in the
    main thread: it stops every node at once through `stop_all`, rather than waiting for each thread's run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[Execution] = []
        self.stopped = False

    @contextmanager
    def start(self, executor: Executor, workload: Workload, run_dir: Path) -> Iterator[Execution]:
        if self.stopped:
            raise ExecutorError("stopped: the check was interrupted")
        with executor.start(workload, run_dir) as execution:
            with self._lock:
                self._open.append(execution)
            try:
                if self.stopped:  # stop_all ran while this one was starting
                    execution.stop()
                yield execution
            finally:
                with self._lock:
                    self._open.remove(execution)

    def stop_all(self) -> None:
        with self._lock:
            self.stopped = True
            executions = list(self._open)
        for execution in executions:
            execution.stop()


def run_step(executions: OpenExecutions, executor: Executor, step: Step, run_dir: Path,
             timeout_s: float) -> tuple[dict[str, Any], bytes | None]:
    """Run one step on one node: its (state, exit_code, reason) and the result file's bytes when it succeeded."""
    # a whole machine of the pool on target kubernetes (its GPUs, half its CPUs and memory), as node i of a
    # multi-node check asks for; the other executors place nothing
    resources = getattr(executor, "node_resources", None) or Resources()
    role = Role(step.name, step.command, env=dict(step.env), resources=resources)
    workload = Workload(f"node-{step.name}", (role,), volumes=(VolumePurpose.SCRATCH, VolumePurpose.RESULTS),
                        timeout_s=timeout_s)
    try:
        with executions.start(executor, workload, run_dir) as execution:
            outcome = execution.wait(timeout_s)
            node = outcome.nodes[0]
            data = None
            if outcome.succeeded:
                try:
                    data = execution.read_result(step.name, 0, step.result_file)
                except (OSError, ExecutorError) as error:
                    return {"state": NodeState.FAILED.value, "exit_code": 0,
                            "reason": f"no {step.result_file}: {error}"}, None
    finally:
        # the local executor keeps a node's volumes under run_dir (<role>-<index>/<purpose>): the scratch copy of
        # the checkpoints is megabytes to gigabytes nobody reads (the hosts executor removes its volumes at stop)
        shutil.rmtree(run_dir / f"{role.name}-0" / VolumePurpose.SCRATCH.value, ignore_errors=True)
    reason = "timed out" if outcome.timed_out else node.reason
    return {"state": node.state.value, "exit_code": node.exit_code, "reason": reason}, data


def run_node(host: str, executor: Executor, steps: list[Step], workdir: Path, executions: OpenExecutions,
             remaining_s: Callable[[], float], log: Callable[[str], None]) -> dict[str, Any]:
    """Every step on one node, in order; the node's row. A step that fails does not stop the next (its figures
    are independent); an unreachable node stops."""
    row: dict[str, Any] = {"host": host, "state": NodeState.SUCCEEDED.value}
    problems: list[str] = []
    for step in steps:
        try:
            outcome, data = run_step(executions, executor, step, workdir / host / step.name,
                                     max(1.0, remaining_s() - TORCHRUN_STOP_MARGIN_S))
        except ExecutorError as error:
            if row["state"] == NodeState.SUCCEEDED.value:
                row["state"] = NodeState.FAILED.value
            problems.append(str(error))
            log(f"{host}: {error}")
            break
        problem = _judge(step, outcome, data, row, workdir / host)
        if problem:
            if row["state"] == NodeState.SUCCEEDED.value and outcome["state"] == NodeState.SUCCEEDED.value:
                row["state"] = NodeState.FAILED.value  # the process succeeded, a verdict did not hold
            elif row["state"] == NodeState.SUCCEEDED.value:
                row["state"], row["exit_code"] = outcome["state"], outcome["exit_code"]
            problems.append(problem)
        log(f"{host}: {problem or step.name + ' ok'}")
    if problems:
        row["reason"] = "; ".join(problems)
    return row


def _judge(step: Step, outcome: dict[str, Any], data: bytes | None, row: dict[str, Any], node_dir: Path) -> str:
    """Put the step's figures into the node's row; what went wrong, or ''."""
    if data is None:
        reason = f": {outcome['reason']}" if outcome["reason"] else ""
        return f"{step.name} {outcome['state']}{reason}"
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / step.result_file).write_bytes(data)
    try:
        judged = step.judge(data)
    except RecordError as error:
        return f"{step.name}: {error}"
    for figure in ROW_FIGURES[step.name]:
        if figure in judged.metrics:
            row[figure] = judged.metrics[figure].value
    return f"{step.name}: {judged.reason}" if judged.status is not Status.PASS else ""


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
        executions = OpenExecutions()
        threads = ThreadPoolExecutor(max_workers=len(chosen))
        try:
            futures = [threads.submit(run_node, host, node_executor, steps[host], workdir, executions,
                                      ctx.remaining_s, ctx.log) for host, node_executor in chosen]
            rows = [future.result() for future in futures]
        except BaseException:  # interrupted or out of time: stop every node now, not when each one ends
            executions.stop_all()
            raise
        finally:
            threads.shutdown(wait=True)
        for row in rows:
            row["logs"] = ctx.relative(workdir / row["host"])  # <step>/<role>-0*.log per step
        self._record(result, rows, config)
        SlowNodeCheck.name_kubernetes_nodes(executor, result)
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
        results = "{volume[results]}"
        env = {**TORCHRUN_ENV, **socket_env(LOOPBACK_IFNAME)}  # the ranks of one node meet over loopback

        def torchrun(script: str, args: list[str], nproc: int) -> tuple[str, ...]:
            return tuple(torchrun_command(script, args, nproc, python="{python}", workloads_dir="workloads"))

        if name == "system":
            def judge_system(data: bytes) -> CheckResult:
                judged = CheckResult("system", declared=SystemCheck.metrics)
                facts = read_result(data.decode().splitlines(), SystemFacts)
                record_facts(judged, facts)
                for problem in facts_problems(facts, ctx.env.spec, config.system):
                    judged.fail(problem)
                return judged

            return Step(name, ("{python}", "-m", "dcforge.checks.system", "--output",
                               f"{results}/{SYSTEM_FACTS_FILE}"), SYSTEM_FACTS_FILE, judge_system)
        if name == "train":
            return _train_step(ctx, config.train, sharing, torchrun, env)
        if name == "allreduce":
            nproc = config.allreduce.nproc()

            def judge_sweep(data: bytes) -> CheckResult:
                judged = CheckResult("allreduce", declared=AllreduceCheck.metrics)
                record_sweep(judged, read_result(data.decode().splitlines(), AllreduceResult), nproc)
                return judged

            args = sweep_args(config.allreduce, f"{results}/{ALLREDUCE_RESULT_FILE}")
            return Step(name, torchrun("allreduce.py", args, nproc), ALLREDUCE_RESULT_FILE, judge_sweep, env)
        return _checkpoint_step(config.checkpoint, host, torchrun, env)


def _train_step(ctx: CheckContext, config: NodeTrainConfig, sharing: int, torchrun, env: Mapping[str, str]) -> Step:
    """`sharing`: how many nodes run on one machine at once (target local: all of them)."""
    import os

    from workloads.train_config import TrainConfig, TrainConfigError

    nproc = config.nproc()
    threads = config.threads or (max(1, (os.cpu_count() or 1) // (nproc * sharing)) if sharing > 1 else None)
    train_config = TrainConfig(preset=config.preset, seq_len=config.seq_len, global_batch_size=config.global_batch_size,
                               steps=config.steps, parallelism=config.parallelism, compile=config.compile,
                               metrics_file=f"{{volume[results]}}/{TRAIN_METRICS_FILE}",
                               checkpoint_dir="{volume[scratch]}/train", checkpoint_every=config.steps,
                               keep_checkpoints=1, resume=False, log_every=5, threads=threads)
    try:
        train_config.validate(nproc)
    except TrainConfigError as error:
        raise train_config_error(ctx, f"{NodeLevelCheck.name}.train", error) from None

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("train", declared=TrainCheck.metrics)
        # no MFU peak: the CPU peak is measured on this machine, not on the node
        summarize(judged, read_records(data.decode().splitlines(), TrainStep), config, nproc, None)
        return judged

    return Step("train", torchrun("train.py", train_config.to_args(), nproc), TRAIN_METRICS_FILE, judge, env)


def _checkpoint_step(config: NodeCheckpointConfig, host: str, torchrun, env: Mapping[str, str]) -> Step:
    nproc = config.nproc()
    # each node writes under its own folder of a shared directory; {volume[scratch]} is the node's own
    directory = f"{config.directory}/{host}" if config.directory else "{volume[scratch]}/checkpoint"

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("checkpoint", declared=CheckpointCheck.metrics)
        record_checkpoint(judged, read_result(data.decode().splitlines(), CheckpointResult))
        return judged

    return Step("checkpoint", torchrun("train_checkpoint_bench.py", checkpoint_args(
        config, directory, f"{{volume[results]}}/{CHECKPOINT_RESULT_FILE}"), nproc), CHECKPOINT_RESULT_FILE, judge, env)
