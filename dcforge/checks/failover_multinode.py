"""`train_failover_multinode`: a whole node leaves mid-training; torchrun goes on with the others from the last
complete checkpoint.

torchrun runs elastic (`--nnodes min:max`, c10d rendezvous hosted by node 0) on the target's nodes (executor_for:
SSH hosts, or N agents on this machine). Checkpoints and the training records go to the shared `checkpoints`
volume: the surviving ranks load what every rank saved, and rank 0 -- wherever a rendezvous round puts it --
appends to the one records file. Once step failAtStep − 1 is complete (and its checkpoint saved when one was due)
the check isolates one node (`Execution.isolate_node`: every process of it killed at once, then its link down).
Node 0 hosts the rendezvous store, so the isolated node is never node 0: losing it ends the job (docs/executors.md).

The figures are train_failover's, from the same records by the same functions (judge_recovery, docs/metrics.md):
steps lost = failure step − resumed step; time to resume = first step completed after the restart − the failure.
Here the failure step is one past the last step completed before the restart, and the fault record (TrainFault,
with the node's name and the kill time) is written by this check, which injected the fault.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from dcforge.steps.torchrun import TORCHRUN_STOP_MARGIN_S
from dcforge.placement.targets import executor_for, machine_resources, ranks_per_node
from dcforge.harness.check import settings_error
from dcforge.steps.train import train_config_error, workload_config
from dcforge.steps.train_failover import (TRAIN_FAILOVER_METRICS, FailoverTrainingConfig, judge_recovery, when_held,
                                           with_pod_loss)
from dcforge.executors.base import Execution, ExecutionOutcome, ExecutorError, NodeState, NodeStatus
from dcforge.placement.torchrun import Elastic, TorchrunJob, node_records, torchrun_workload
from dcforge.harness.check import CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, Status
from workloads.records import (TRAIN_METRICS_FILE, TRAIN_RECORDS, Record, TrainCheckpointSaved, TrainFault,
                               TrainStart, TrainStep, read_records)

LOCAL_NODES = 3
"""Nodes on target local: node 0 (the store), the isolated node, and one more so that training goes on across
nodes, not on node 0 alone."""
POLL_S = 0.2
HOLD_S = 15.0
"""Target kubernetes: how long the ranks hold after step failAtStep − 1 for the check to delete a node's pod (it
reads their logs every 0.2 s); the survivors then meet the lost peer's absence in the next step's collective."""


class TrainFailoverMultinodeConfig(FailoverTrainingConfig):
    global_batch_size: int = Field(default=12, ge=1)
    """Sequences per step over all ranks; must be divisible by the world size before and after the loss (12 fits
    2, 3, 4 and 6 ranks)."""
    nodes: int | None = Field(default=None, ge=2)
    """Nodes to train on; default every host of acceptance.hosts, or 3 on target local."""
    fail_node: int | None = Field(default=None, ge=1)
    """Index of the node to isolate; default the last. Never 0: node 0 hosts the rendezvous store."""
    rendezvous_timeout_s: int = Field(default=60, ge=1)
    """How long nodes wait for each other at a c10d rendezvous."""
    last_call_s: int = Field(default=3, ge=1)
    """Once all but one node joined a rendezvous round, how long it waits for more (torchrun's
    last_call_timeout): part of the time to resume; a node slower than this to start misses the first round."""
    heartbeat_s: int = Field(default=1, ge=1)
    """Rendezvous heartbeat interval (torchrun's keep_alive_interval)."""
    heartbeat_misses: int = Field(default=3, ge=1)
    """Heartbeats a node may miss before the rendezvous drops it (keep_alive_max_attempt): the lost node is
    noticed after heartbeatS × heartbeatMisses, part of the time to resume."""
    link_down_s: float = Field(default=10.0, gt=0)
    """How long the isolated node's link stays down; the check waits for it to come back before it ends."""


class TrainFailoverMultinodeCheck:
    name = "train_failover_multinode"
    description = ("Isolates one node mid-training (processes killed, link down); elastic torchrun resumes on the "
                   "others from the last checkpoint: steps lost, time to resume.")
    Config = TrainFailoverMultinodeConfig
    requires_declared_gpus = False  # the nodes are the hosts (target hosts), not necessarily this machine
    metrics = tuple(m for m in TRAIN_FAILOVER_METRICS if m.name != "final_params_match") + (
        MetricSpec("nodes_after", "nodes", "higher", "nodes in the worker group that resumed",
                   "the nodes training went on with: every node but the isolated one"),
    )

    def run(self, ctx: CheckContext, config: TrainFailoverMultinodeConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        executor, nodes, ifname = executor_for(ctx, self.name, config.nodes, local_nodes=LOCAL_NODES)
        nproc = config.nproc_per_node or ranks_per_node(executor)  # a pool machine's GPUs on target kubernetes
        victim = config.fail_node if config.fail_node is not None else nodes - 1
        if nodes < 2:
            raise settings_error(ctx, self.name, "nodes", f"{nodes} node: at least 2 are needed (node 0 hosts the "
                                                          "rendezvous store and is never the one isolated)")
        if victim >= nodes:
            raise settings_error(ctx, self.name, "failNode", f"node {victim} is not one of the {nodes} nodes "
                                                             f"(1-{nodes - 1}; node 0 hosts the rendezvous store)")
        on_kubernetes = executor.name == "kubernetes"
        job = self._job(ctx, config, nodes, nproc, ifname, hold=on_kubernetes)
        workdir = ctx.artefact_dir(self.name)
        ctx.log(f"elastic torchrun on {nodes} nodes x{nproc} ({executor.name}); node {victim} leaves during step "
                f"{config.fail_at_step}")
        try:
            if on_kubernetes:
                outcome, lost, data = train_with_pod_loss(ctx, executor, job, config, victim, workdir / "nodes")
            else:
                outcome, fault_time, data = train_with_fault(ctx, executor, job, config, victim, workdir / "nodes")
        except ExecutorError as error:
            result.status, result.reason = Status.ERROR, str(error)
            return result
        records = read_records(data.decode().splitlines(), *TRAIN_RECORDS)
        if on_kubernetes and lost is not None:
            records = with_pod_loss(records, *lost)
        elif not on_kubernetes and fault_time is not None:
            records = with_fault(records, fault_time, outcome.nodes[victim].host)
        (workdir / TRAIN_METRICS_FILE).write_text("".join(r.to_json() + "\n" for r in records))
        result.artefacts["metrics"] = ctx.relative(workdir / TRAIN_METRICS_FILE)
        self._judge(ctx, result, config, outcome.nodes, victim, records, nproc)
        result.details.update({"nnodes": nodes, "min_nodes": nodes - 1, "nproc_per_node": nproc,
                               "executor": executor.name, "socket_ifname": ifname,
                               "isolated_node": outcome.nodes[victim].host})
        return result

    def _job(self, ctx: CheckContext, config: TrainFailoverMultinodeConfig, nodes: int, nproc: int,
             ifname: str | None, hold: bool) -> TorchrunJob:
        """`hold` (target kubernetes, where the check cannot read the shared records while they are written): the
        ranks hold after step failAtStep − 1 for the check to delete the node's pod, and every node hands the
        records back through its results."""
        from workloads.train_config import TrainConfigError

        metrics = f"{{volume[checkpoints]}}/{TRAIN_METRICS_FILE}"
        train = workload_config(config.preset, config.seq_len, config.global_batch_size, config.steps,
                                checkpoint_dir="{volume[checkpoints]}/train",
                                checkpoint_every=config.checkpoint_every, resume=True, log_every=1,
                                metrics_file=metrics,
                                # a peer lost without a word (no FIN: link down first) ends a step at most this late
                                collective_timeout_s=30.0,
                                hold_at_step=config.fail_at_step - 1 if hold else None, hold_s=HOLD_S)
        try:
            for world in (nodes * nproc, (nodes - 1) * nproc):  # before and after the loss
                train.validate(world)
        except TrainConfigError as error:
            raise train_config_error(ctx, self.name, error) from None
        return TorchrunJob("train.py", tuple(train.to_args()), nnodes=nodes, nproc_per_node=nproc,
                           collect_files=(metrics,) if hold else (),
                           socket_ifname=ifname, rendezvous_timeout_s=config.rendezvous_timeout_s,
                           timeout_s=max(1.0, ctx.remaining_s() - TORCHRUN_STOP_MARGIN_S),
                           elastic=Elastic(min_nodes=nodes - 1, max_restarts=1, last_call_s=config.last_call_s,
                                           keep_alive_interval_s=config.heartbeat_s,
                                           keep_alive_max_attempt=config.heartbeat_misses))

    def _judge(self, ctx: CheckContext, result: CheckResult, config: TrainFailoverMultinodeConfig,
               statuses: list[NodeStatus], victim: int, records: list[Record], nproc: int) -> None:
        rows = node_records(statuses, ctx.relative)
        rows[victim].update(state="isolated", reason="failure injection: every process killed, link down")
        result.details["nodes"] = rows
        for status in statuses:  # by index: on target local every node's host is `local`
            result.artefacts[f"log.node{status.index}"] = ctx.relative(status.log_path)
        survivors = [s for s in statuses if s.index != victim]
        if not any(isinstance(r, TrainFault) for r in records):
            result.fail("training ended before the fault could be injected (no step "
                        f"{config.fail_at_step - 1} completed in a group of every node)")
            return
        unfinished = [s for s in survivors if s.state is not NodeState.SUCCEEDED]
        if unfinished:
            result.fail("the other nodes did not finish: " + "; ".join(
                f"{s.host}: {s.state.value}" + (f" (exit {s.exit_code})" if s.exit_code is not None else "")
                for s in unfinished))
        judge_recovery(result, records, config)
        restarted = [r for r in records if isinstance(r, TrainStart) and r.attempt > 0]
        if restarted:
            result.add_metric("nodes_after", restarted[0].world_size // nproc)
            if restarted[0].world_size != len(survivors) * nproc:
                result.fail(f"resumed with {restarted[0].world_size} ranks, expected {len(survivors) * nproc} "
                            f"(every node but the isolated one)")


def train_with_fault(ctx: CheckContext, executor, job: TorchrunJob, config: TrainFailoverMultinodeConfig,
                     victim: int, run_dir: Path) -> tuple[ExecutionOutcome, float | None, bytes]:
    """Run the elastic job, isolate the node when due, wait for the others and read the records; every process is
    gone on return, and the isolated host's link is back up."""
    with executor.start(torchrun_workload(TrainFailoverMultinodeCheck.name, job), run_dir) as execution:
        fault_time, link_back = inject_when_due(ctx, execution, config, victim, job.nnodes * job.nproc_per_node)
        outcome = execution.wait(max(1.0, ctx.remaining_s() - TORCHRUN_STOP_MARGIN_S),
                                 lambda s: ctx.log(" ".join(f"{n.host}:{n.state.value}" for n in s)))
        data = execution.read_shared(TRAIN_METRICS_FILE)
        if link_back is not None:
            # the host restores its link on a timer; stopping once it is back leaves the host as it was found and
            # lets its ssh connection close in order (an interrupt does not wait: the timer still runs there)
            time.sleep(max(0.0, link_back - time.monotonic()))
        return outcome, fault_time, data


def train_with_pod_loss(ctx: CheckContext, executor, job: TorchrunJob, config: TrainFailoverMultinodeConfig,
                        victim: int, run_dir: Path) -> tuple[ExecutionOutcome, tuple[float, str] | None, bytes]:
    """Target kubernetes: run the elastic Indexed Job, delete the victim's pod when the ranks hold after step
    failAtStep − 1, wait for the others and read the records a survivor handed back. Returns the outcome, (the
    delay from seeing the hold to the deletion, the pod) or None when it never held, and the records."""
    def strike() -> str:
        pod = next(s.host for s in execution.statuses() if s.index == victim)
        execution.isolate_node("torchrun", victim, config.link_down_s)
        ctx.log(f"deleted pod {pod} (node {victim}) as the ranks held after step {config.fail_at_step - 1}")
        return pod

    workload = torchrun_workload(TrainFailoverMultinodeCheck.name, job, machine_resources(executor))
    with executor.start(workload, run_dir) as execution:
        lost = when_held(ctx, execution, "torchrun", config.fail_at_step - 1, strike)
        outcome = execution.wait(max(1.0, ctx.remaining_s() - TORCHRUN_STOP_MARGIN_S),
                                 lambda s: ctx.log(" ".join(f"{n.host}:{n.state.value}" for n in s)))
        survivors = [n for n in outcome.nodes if n.index != victim and n.state is NodeState.SUCCEEDED]
        if not survivors:
            raise ExecutorError(f"no node finished, so no records came back: {outcome.failure_summary()}")
        return outcome, lost, execution.read_result("torchrun", survivors[0].index, TRAIN_METRICS_FILE)


def kill_due(records: list[Record], fail_at_step: int, checkpoint_every: int, world_size: int) -> bool:
    """Whether the node may be isolated now: the newest worker group has every node, it completed step
    failAtStep − 1 or later, no checkpoint save is under way, and none is due at the next step (a node lost in
    the middle of a save would lose that checkpoint: more than the interval redone)."""
    starts = [i for i, r in enumerate(records) if isinstance(r, TrainStart)]
    if not starts or records[starts[-1]].world_size != world_size:
        return False
    group = records[starts[-1]:]
    done = [r.step for r in group if isinstance(r, TrainStep)]
    if not done or done[-1] < fail_at_step - 1:
        return False
    last = done[-1]
    saved = {r.step for r in group if isinstance(r, TrainCheckpointSaved)}
    saving = last % checkpoint_every == 0 and last not in saved
    return not saving and ((last + 1) % checkpoint_every != 0 or checkpoint_every == 1)


def inject_when_due(ctx: CheckContext, execution: Execution, config: TrainFailoverMultinodeConfig, victim: int,
                    world_size: int) -> tuple[float | None, float | None]:
    """Poll the shared records until kill_due, then isolate the node. Returns the failure time (epoch seconds,
    the clock of the records) and when its link is back (monotonic), or (None, None) when training ended (or
    failed) first."""
    while ctx.remaining_s() > TORCHRUN_STOP_MARGIN_S:
        if any(status.state.finished for status in execution.statuses()):
            return None, None
        try:
            records = read_records(execution.read_shared(TRAIN_METRICS_FILE).decode().splitlines(), *TRAIN_RECORDS)
        except ExecutorError:
            records = []  # not written yet
        if kill_due(records, config.fail_at_step, config.checkpoint_every, world_size):
            fault_time = time.time()
            execution.isolate_node("torchrun", victim, config.link_down_s)
            # the cut starts on the host just after isolate_node returns (hosts: half a second later)
            return fault_time, time.monotonic() + config.link_down_s + 2.0
        time.sleep(POLL_S)
    return None, None


def with_fault(records: list[Record], fault_time: float, node: str) -> list[Record]:
    """The records with the fault this check injected, just before the restart it caused: the failure step is one
    past the last step completed before that restart (the kill lands between two steps' records)."""
    restart = next((i for i, r in enumerate(records) if isinstance(r, TrainStart) and r.time > fault_time),
                   len(records))
    group = max((i for i, r in enumerate(records[:restart]) if isinstance(r, TrainStart)), default=0)
    last = max((r.step for r in records[group:restart] if isinstance(r, TrainStep)), default=0)
    return [*records[:restart], TrainFault(step=last + 1, rank=None, time=fault_time, node=node), *records[restart:]]
