"""The pieces of `train_failover` on target kubernetes, for real, on this machine: the command the training pod
runs (train.py under torchrun, wrapped by `dcforge.executors.collect`) holds after step failAtStep − 1, is killed
there as the pod would be deleted, and the same command started again -- the Job's new pod -- resumes from the
shared checkpoints without holding again, finishes, and hands back the records of both runs; judged by the
check's own rules (`with_pod_loss`, `judge_recovery`). The Kubernetes side (the deletion, the Job's replacement)
is tests/unit/test_kubernetes_pool_checks.py's, on the fake API."""

from __future__ import annotations

import time

import pytest

from dcforge.steps.step import CLAIM_VOLUMES, NODE_ENV, node_torchrun
from dcforge.checks.train_failover import (TRAIN_RECORDS, TrainFailoverCheck, TrainFailoverConfig, held_run,
                                           judge_recovery, with_pod_loss)
from dcforge.executors.base import NodeState, Role, Workload
from dcforge.executors.local import LocalExecutor
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckResult, Status
from dcforge.spec.loader import load_environment
from workloads.records import HOLD_LINE, read_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_held_run_killed_and_started_again_resumes_and_hands_back_both_runs_records(tmp_path):
    config = TrainFailoverConfig.model_validate({"preset": "tiny", "seqLen": 32, "globalBatchSize": 4, "steps": 10,
                                                 "checkpointEvery": 4, "failAtStep": 7, "nprocPerNode": 2})
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 280)
    held = held_run(ctx, config, 2, "{volume[checkpoints]}/train_failover")
    command = ("{python}", "-m", "dcforge.executors.collect", "--into", "{volume[results]}", "--file",
               held.metrics_file, "--", *node_torchrun("train.py", held.to_args(), 2))
    workload = Workload("node-faulted", (Role("faulted", command, env=NODE_ENV),), volumes=CLAIM_VOLUMES)
    with LocalExecutor().start(workload, tmp_path / "run") as first:  # the pod that is lost
        deadline = time.monotonic() + 120
        while f"{HOLD_LINE} 6" not in first.read_log("faulted", 0):
            assert time.monotonic() < deadline and not first.statuses()[0].state.finished, first.read_log("faulted", 0)
            time.sleep(0.2)
        seen = time.monotonic()
        first.kill_node("faulted", 0)
        delay_s = time.monotonic() - seen
        assert first.wait(30).nodes[0].state is NodeState.KILLED
    with LocalExecutor().start(workload, tmp_path / "run") as second:  # the Job's new pod, same claim
        outcome = second.wait(180)
        assert outcome.succeeded, second.read_log("faulted", 0)[-3000:]
        # the node's log goes on in the same file: the first run held, the second did not (once per checkpoint dir)
        assert second.read_log("faulted", 0).count(HOLD_LINE) == 1
        data = second.read_result("faulted", 0, "faulted.jsonl")
    records = with_pod_loss(read_records(data.decode().splitlines(), *TRAIN_RECORDS), delay_s, "local")
    result = CheckResult(TrainFailoverCheck.name, declared=TrainFailoverCheck.metrics)
    judge_recovery(result, records, config)
    assert result.status is not Status.FAIL, result.reason
    figures = {name: metric.value for name, metric in result.metrics.items()}
    assert (figures["failure_step"], figures["resumed_step"], figures["steps_lost"]) == (7, 4, 3)
    assert 0 < figures["time_to_resume_s"] < 60


def test_an_elastic_run_held_and_missing_a_node_goes_on_with_the_others(tmp_path):
    """train_failover_multinode's Kubernetes command for real, on three local nodes: the ranks hold after step 6,
    the last node's processes are killed (as its pod would be deleted), the others resume elastically from the
    step-4 checkpoint with two nodes and hand back the records every node appended."""
    from dcforge.checks.failover_multinode import (TrainFailoverMultinodeCheck, TrainFailoverMultinodeConfig,
                                                   train_with_pod_loss)
    from dcforge.steps.step import LOOPBACK_IFNAME

    config = TrainFailoverMultinodeConfig.model_validate({"preset": "tiny", "seqLen": 32, "steps": 10,
                                                          "checkpointEvery": 4, "failAtStep": 7})
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 280)
    job = TrainFailoverMultinodeCheck()._job(ctx, config, 3, 1, LOOPBACK_IFNAME, hold=True)
    outcome, lost, data = train_with_pod_loss(ctx, LocalExecutor(), job, config, 2, tmp_path / "nodes")
    assert lost is not None, outcome.failure_summary()
    assert [n.state for n in outcome.nodes] == [NodeState.SUCCEEDED, NodeState.SUCCEEDED, NodeState.KILLED]
    records = with_pod_loss(read_records(data.decode().splitlines(), *TRAIN_RECORDS), *lost)
    result = CheckResult(TrainFailoverMultinodeCheck.name, declared=TrainFailoverMultinodeCheck.metrics)
    judge_recovery(result, records, config)
    assert result.status is not Status.FAIL, result.reason
    figures = {name: metric.value for name, metric in result.metrics.items()}
    assert (figures["failure_step"], figures["resumed_step"], figures["steps_lost"]) == (7, 4, 3)
