"""benchmarks/cluster_startup.py against the fake API: the rounds run through the executor, every figure is
reported and nothing is left. (The fake's figures say nothing about a cluster: the stand-in kubelet decides them.)"""

from __future__ import annotations

import time

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from benchmarks.cluster_startup import main  # noqa: E402
from dcforge.paths import REPO_ROOT  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402
from tests.unit.test_kubernetes_accept import NS, Kubelet, labelled  # noqa: E402


def test_the_startup_benchmark_reports_startup_cleanup_and_requests(capsys):
    with FakeCluster() as cluster:
        def play(pods: list[str]) -> None:
            time.sleep(0.3)  # scheduling and the container start, as the stand-in kubelet plays them
            for pod in pods:
                cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.90"})
            for pod in pods:
                cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})

        with Kubelet(cluster, play):
            assert main(["--rounds", "2", "--env-file", str(REPO_ROOT / "stacks" / "Pulumi.cluster.yaml")],
                        api_client=cluster.api_client()) == 0
        assert labelled(cluster) == []
    out = capsys.readouterr().out
    assert out.count("pods Running after") == 2
    startup = float(out.split("startup_s: median ")[1].split()[0])
    assert 0.3 <= startup < 10
    assert "cleanup_s: median" in out and "api_requests: median" in out


def test_without_a_cluster_the_benchmark_says_so_and_does_nothing(capsys):
    assert main([]) == 0
    assert "skipped: needs --kubeconfig" in capsys.readouterr().err
