"""Running steps on nodes: one step as a one-node workload on an executor (`run_step`), with every open execution
stoppable at once from the main thread (`OpenExecutions`); every chosen node's steps at once, each node's figures
a row (`run_on_nodes`, node_level's and gpu_health's runner)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dcforge.executors.base import (Execution, Executor, ExecutorError, NodeState, Resources, Role, StatusCallback,
                                    VolumePurpose, Workload, pool_machines)
from dcforge.executors.hosts import HostsExecutor
from dcforge.executors.local import LocalExecutor
from dcforge.findings import Action, most_urgent
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckSkipped, Status
from dcforge.steps.step import Step, platform_failure
from dcforge.steps.torchrun import TORCHRUN_STOP_MARGIN_S
from workloads.records import RecordError

ROW_FIGURES: dict[str, tuple[str, ...]] = {"system": ("cpu_count", "memory_gi", "gpu_count"),
                                           "train": ("tokens_per_s",), "allreduce": ("busbw_gbps",),
                                           "checkpoint": ("save_gbps", "load_gbps"),
                                           "gpu_health": ("gpus_checked", "gpus_failing", "fatal_xids")}
"""The metrics of each step's single-node result that become columns of the node's row."""


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


def run_step(executions: OpenExecutions, executor: Executor, step: Step, run_dir: Path, timeout_s: float,
             on_status: StatusCallback | None = None) -> tuple[dict[str, Any], bytes | None]:
    """Run one step on one node: its outcome (state, exit_code, reason, host, kubernetes_node, log, api_requests,
    platform_failure: the node never ran or was killed for its memory limit; on Kubernetes pods_started_s and
    cleanup_s) and the result file's bytes when it succeeded."""
    # a whole machine of the pool on target kubernetes (its GPUs, half its CPUs and memory), as node i of a
    # multi-node check asks for; the other executors place nothing
    machines = pool_machines(executor)
    resources = machines.node_resources if machines is not None else Resources()
    role = Role(step.name, step.command, env=dict(step.env), resources=resources)
    workload = Workload(f"node-{step.name}", (role,), volumes=step.volumes, timeout_s=timeout_s,
                        checkpoint_class=step.claim_class, checkpoint_size_gi=step.claim_size_gi)
    data, missing = None, ""
    try:
        with executions.start(executor, workload, run_dir) as execution:
            outcome = execution.wait(timeout_s, on_status)
            if outcome.succeeded:
                try:
                    data = execution.read_result(step.name, 0, step.result_file)
                except (OSError, ExecutorError) as error:
                    missing = f"no {step.result_file}: {error}"
            api_requests = getattr(execution, "api_requests", None)
    finally:
        # the local executor keeps a node's volumes under run_dir (<role>-<index>/<purpose>): the scratch copy of
        # the checkpoints is megabytes to gigabytes nobody reads (the hosts executor removes its volumes at stop)
        shutil.rmtree(run_dir / f"{role.name}-0" / VolumePurpose.SCRATCH.value, ignore_errors=True)
    node = outcome.nodes[0]
    state, reason = node.state.value, "timed out" if outcome.timed_out else node.reason
    if missing:
        state, reason = NodeState.FAILED.value, missing
    return {"state": state, "exit_code": node.exit_code, "reason": reason, "host": node.host,
            "kubernetes_node": node.kubernetes_node, "log": node.log_path, "api_requests": api_requests,
            "platform_failure": platform_failure([node]), **pod_timings(execution)}, data


def pod_timings(execution: Execution) -> dict[str, float | None]:
    """On Kubernetes: seconds from start to every pod having run, and the cleanup's seconds (benchmarks/README.md,
    "Acceptance on Kubernetes"); empty on the other executors."""
    if not hasattr(execution, "startup_s"):
        return {}
    return {"pods_started_s": execution.startup_s, "cleanup_s": execution.cleanup_s}


def node_executors(executor: Executor, count: int) -> list[tuple[str, Executor]]:
    """(name, an executor placing one node there) for each of the first `count` nodes."""
    if isinstance(executor, HostsExecutor):
        return [(host.name, HostsExecutor([host], executor.options)) for host in executor.hosts[:count]]
    if isinstance(executor, LocalExecutor):
        return [(f"local-{i}", executor) for i in range(count)]
    machines = pool_machines(executor)
    if machines is not None and machines.nodes:  # pinned to the pool's machines by name (`executor_for`)
        return [(node, machines.pinned([node])) for node in machines.nodes[:count]]
    # an unpinned kubernetes executor: the spec declares no GPU pool, so there are no nodes to name
    raise CheckSkipped(f"node_level on target {executor.name} pins one pod to each node of the acceptance pool, "
                       "and the spec declares no GPU pool (dcforge:gpuPools)")


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


def run_on_nodes(chosen: list[tuple[str, Executor]], steps: dict[str, list[Step]], workdir: Path,
                 ctx: CheckContext) -> list[dict[str, Any]]:
    """Each chosen node's steps (`steps[host]`), every node at once, a thread each; the nodes' rows in `chosen`'s
    order."""
    executions = OpenExecutions()
    threads = ThreadPoolExecutor(max_workers=len(chosen))
    try:
        futures = [threads.submit(run_node, host, node_executor, steps[host], workdir, executions,
                                  ctx.remaining_s, ctx.log) for host, node_executor in chosen]
        return [future.result() for future in futures]
    except BaseException:  # interrupted or out of time: stop every node now, not when each one ends
        executions.stop_all()
        raise
    finally:
        threads.shutdown(wait=True)


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
    if judged.details.get("action"):  # the node's recommended action (dcforge.findings), most urgent of its steps'
        row["action"] = most_urgent([Action(row.get("action", "none")), Action(judged.details["action"])]).value
    return f"{step.name}: {judged.reason}" if judged.status is not Status.PASS else ""
