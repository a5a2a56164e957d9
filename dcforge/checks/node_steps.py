"""The single-node workloads as steps an executor runs on one node: what `node_level` runs on every node, and what
the single-node checks run on a machine of the acceptance pool on target kubernetes (`dcforge/checks/on_pool.py`).

A `Step` is the command (executor templates: `{python}`, `{volume[results]}`), the typed result file it writes,
and its judge: the single-node check's own formulas and verdicts (`record_facts`/`facts_problems`, `summarize`,
`record_sweep`, `record_checkpoint`) over that file, so a node passes a step exactly when the check would pass
there. `run_step` runs one step as a one-node workload and reads its result back.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcforge.checks._torchrun import torchrun_command
from dcforge.checks.allreduce import AllreduceCheck, AllreduceCheckConfig, record_sweep, sweep_args
from dcforge.checks.checkpoint import CheckpointCheck, CheckpointCheckConfig, checkpoint_args, record_checkpoint
from dcforge.checks.gpu_bandwidth import (GPU_BANDWIDTH_FILE, GpuBandwidthCheck, GpuBandwidthConfig,
                                          measurements_result)
from dcforge.checks.multinode import LOOPBACK_IFNAME, platform_failure
from dcforge.checks.system import SystemCheck, SystemConfig, judge_facts
from dcforge.checks.train import TrainCheck, TrainCheckConfig, summarize, train_config_error
from dcforge.executors.base import (Execution, Executor, ExecutorError, NodeState, Resources, Role, StatusCallback,
                                    VolumePurpose, Workload)
from dcforge.executors.torchrun import TORCHRUN_ENV, socket_env
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckResult
from dcforge.spec.models import Environment
from workloads.records import (ALLREDUCE_RESULT_FILE, CHECKPOINT_RESULT_FILE, SYSTEM_FACTS_FILE, TRAIN_METRICS_FILE,
                               AllreduceResult, CheckpointResult, SystemFacts, TrainStep, read_records, read_result)

RESULTS = "{volume[results]}"
NODE_ENV = {**TORCHRUN_ENV, **socket_env(LOOPBACK_IFNAME)}
"""A step's torchrun environment: the ranks of one node meet over loopback."""


NODE_VOLUMES = (VolumePurpose.SCRATCH, VolumePurpose.RESULTS)
"""A step's volumes: the node's scratch space and the results it writes."""
CLAIM_VOLUMES = (*NODE_VOLUMES, VolumePurpose.CHECKPOINTS)
"""And the shared checkpoints volume (target kubernetes: a claim of the checkpoints StorageClass)."""


@dataclass(frozen=True)
class Step:
    """One single-node workload: the command a node runs, the result file it writes, and how it is judged."""

    name: str
    command: tuple[str, ...]
    result_file: str
    judge: Callable[[bytes], CheckResult]
    """The step's single-node result, by the single-node check's own formulas and verdicts."""
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[VolumePurpose, ...] = NODE_VOLUMES
    claim_class: str | None = None
    """The StorageClass of the checkpoints volume's claim on Kubernetes (`Workload.checkpoint_class`)."""
    claim_size_gi: int | None = None


def node_torchrun(script: str, args: list[str], nproc: int, max_restarts: int = 0) -> tuple[str, ...]:
    """A single-node torchrun of a workload script, as executor templates (`{python}`, `workloads/` in the
    executor's working directory)."""
    return tuple(torchrun_command(script, args, nproc, max_restarts, python="{python}", workloads_dir="workloads"))


def system_step(spec: Environment, config: SystemConfig) -> Step:
    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("system", declared=SystemCheck.metrics)
        judge_facts(judged, read_result(data.decode().splitlines(), SystemFacts), spec, config)
        return judged

    return Step("system", ("{python}", "-m", "dcforge.checks.system", "--output", f"{RESULTS}/{SYSTEM_FACTS_FILE}"),
                SYSTEM_FACTS_FILE, judge)


def train_step(ctx: CheckContext, config: TrainCheckConfig, threads: int | None, settings_key: str) -> Step:
    """`threads`: intra-op threads per rank (None: the workload's default); `settings_key` names the settings in a
    refusal (`train`, `node_level.train`)."""
    from workloads.train_config import TrainConfig, TrainConfigError

    nproc = config.nproc()
    train_config = TrainConfig(preset=config.preset, seq_len=config.seq_len, global_batch_size=config.global_batch_size,
                               steps=config.steps, parallelism=config.parallelism, compile=config.compile,
                               metrics_file=f"{RESULTS}/{TRAIN_METRICS_FILE}",
                               checkpoint_dir="{volume[scratch]}/train", checkpoint_every=config.steps,
                               keep_checkpoints=1, resume=False, log_every=5, threads=threads)
    try:
        train_config.validate(nproc)
    except TrainConfigError as error:
        raise train_config_error(ctx, settings_key, error) from None

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("train", declared=TrainCheck.metrics)
        # no MFU peak: the CPU peak is measured on this machine, not on the node (a GPU's comes from the workload)
        summarize(judged, read_records(data.decode().splitlines(), TrainStep), config, nproc, None)
        return judged

    return Step("train", node_torchrun("train.py", train_config.to_args(), nproc), TRAIN_METRICS_FILE, judge, NODE_ENV)


def allreduce_step(config: AllreduceCheckConfig) -> Step:
    nproc = config.nproc()

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("allreduce", declared=AllreduceCheck.metrics)
        record_sweep(judged, read_result(data.decode().splitlines(), AllreduceResult), nproc)
        return judged

    args = sweep_args(config, f"{RESULTS}/{ALLREDUCE_RESULT_FILE}")
    return Step("allreduce", node_torchrun("allreduce.py", args, nproc), ALLREDUCE_RESULT_FILE, judge, NODE_ENV)


def checkpoint_step(config: CheckpointCheckConfig, directory: str | None,
                    volumes: tuple[VolumePurpose, ...] = NODE_VOLUMES) -> Step:
    """`directory`: where the checkpoints go on the node (a template such as `{volume[checkpoints]}/...`);
    None: the node's scratch volume."""
    nproc = config.nproc()

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("checkpoint", declared=CheckpointCheck.metrics)
        record_checkpoint(judged, read_result(data.decode().splitlines(), CheckpointResult))
        return judged

    args = checkpoint_args(config, directory or "{volume[scratch]}/checkpoint", f"{RESULTS}/{CHECKPOINT_RESULT_FILE}")
    return Step("checkpoint", node_torchrun("train_checkpoint_bench.py", args, nproc), CHECKPOINT_RESULT_FILE, judge,
                NODE_ENV, volumes)


def gpu_bandwidth_step(config: GpuBandwidthConfig) -> Step:
    """workloads/gpu_bandwidth.py on the node's GPUs (its JSON: `measurements_result`)."""
    import json

    def judge(data: bytes) -> CheckResult:
        return measurements_result(CheckResult("gpu_bandwidth", declared=GpuBandwidthCheck.metrics),
                                   json.loads(data))

    command = ("{python}", "workloads/gpu_bandwidth.py", "--bytes", config.bytes, "--iters", str(config.iterations),
               "--gemm-size", str(config.gemm_size), "--gemm-iters", str(config.gemm_iterations),
               "--output", f"{RESULTS}/{GPU_BANDWIDTH_FILE}")
    return Step("gpu_bandwidth", command, GPU_BANDWIDTH_FILE, judge)


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
    resources = getattr(executor, "node_resources", None) or Resources()
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
