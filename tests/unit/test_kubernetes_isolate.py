"""`isolate_node` on the kubernetes executor, against the same fake API as tests/unit/test_kubernetes_executor.py:
deleting the pod takes its processes and its network namespace at once, and an elastic role goes on without it."""

from __future__ import annotations

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from dcforge.executors.base import ExecutorError, NodeState  # noqa: E402
from dcforge.placement.torchrun import Elastic, TorchrunJob, torchrun_workload  # noqa: E402
from tests.unit.test_kubernetes_executor import (NS, cluster, executor, job_name, labelled, spec,  # noqa: E402,F401
                                                 until)


def test_isolating_a_node_deletes_its_pod_and_an_elastic_role_goes_on(spec, cluster, tmp_path):
    job = TorchrunJob("train.py", (), nnodes=2, timeout_s=30, elastic=Elastic(min_nodes=1))
    with executor(spec, cluster).start(torchrun_workload("train", job), tmp_path) as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.9"})
        until(lambda: {s.state for s in execution.statuses()} == {NodeState.RUNNING})
        execution.isolate_node("torchrun", 1, restore_after_s=5)
        assert pods[1] not in [o["metadata"]["name"] for o in cluster.objects(NS)]
        outcome = execution.wait(0.5)
        with pytest.raises(ExecutorError, match="needs a pod that mounts it"):
            execution.read_shared("metrics.jsonl")
    # node 0 ran on until the timeout: the loss of node 1 was within what the role tolerates
    assert outcome.timed_out and [n.state for n in outcome.nodes] == [NodeState.KILLED, NodeState.KILLED]
    assert labelled(cluster) == []
