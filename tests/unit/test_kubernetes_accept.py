"""`dcforge accept` and `dcforge clean` on target kubernetes, against the fake API server (tests/kube_fake.py).

The command line runs unchanged: the client comes from a kubeconfig naming the fake, the multi-node checks start
their workloads through `executor_for`, and a stand-in kubelet (a thread using the same API, as the Job controller
and the kubelet would) creates each Job's pods, moves them through their phases and writes their logs. What is
checked is what a user sees: the verdict, the live view, the one-line reasons, the report, and that nothing
labelled with the run is left on the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from typer.testing import CliRunner  # noqa: E402

from dcforge.cli import app  # noqa: E402
from dcforge.executors.kubernetes_access import EXECUTOR_API_ACCESS, NODE_LIST_ACCESS, rbac_rules  # noqa: E402
from dcforge.executors.kubernetes_objects import (EXECUTION_LABEL, NODE_INDEX_LABEL, RUN_LABEL,  # noqa: E402
                                                  run_label_value)
from dcforge.executors.pod_results import result_lines  # noqa: E402
from dcforge.manifests.common import POOL_LABEL  # noqa: E402
from dcforge.paths import REPO_ROOT  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402
from workloads.records import ALLREDUCE_RESULT_FILE, AllreduceResult, AllreduceRow  # noqa: E402

NS = "acceptance"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: tester, user: {{token: not-checked}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: tester}}}}]
current-context: fake
"""


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        yield fake


def kubeconfig_for(url: str, folder: Path) -> Path:
    path = folder / "kubeconfig.yaml"
    path.write_text(KUBECONFIG.format(url=url))
    return path


def sweep_line() -> str:
    """What workloads/allreduce.py writes on rank 0: one typed result record."""
    row = AllreduceRow(bytes=1 << 20, elements=1 << 18, time_s=0.002, algbw_gbps=0.5, busbw_gbps=0.5, correct=True)
    return AllreduceResult(environment={"backend": "gloo", "world_size": 2}, dtype="float32", warmup=5,
                           iterations=20, formulas=[], results=[row]).to_json() + "\n"


class Kubelet:
    """The Job controller and the kubelet of the fake cluster: pods for each new Job, then `play(pods)`."""

    def __init__(self, cluster: FakeCluster, play):
        self.cluster, self.play = cluster, play
        self.jobs: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Kubelet":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        seen: set[str] = set()
        while not self._stop.wait(0.05):
            for job in [o for o in self.cluster.objects(NS) if o["kind"] == "Job"]:
                if job["metadata"]["name"] not in seen:
                    seen.add(job["metadata"]["name"])
                    self.jobs.append(job)
                    self.play(self.cluster.start_job_pods(NS, job["metadata"]["name"]))


def succeed_with_a_sweep(cluster: FakeCluster, folder: Path):
    results = folder / "results"
    results.mkdir()
    (results / ALLREDUCE_RESULT_FILE).write_text(sweep_line())

    def play(pods: list[str]) -> None:
        for index, pod in enumerate(pods):
            cluster.bind_pod(NS, pod, f"cpu-node-{index}")
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": f"10.244.0.{20 + index}"})
        cluster.write_log(NS, pods[0], "rank 0 done\n" + "\n".join(result_lines(results)) + "\n")
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
    return play


def labelled(cluster: FakeCluster) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in cluster.objects(NS)
            if RUN_LABEL in (o["metadata"].get("labels") or {})]


def accept(kubeconfig: Path, reports: Path, *extra: str):
    return CliRunner().invoke(app, ["accept", "--env", "cluster", "--only", "allreduce_multinode", "--kubeconfig",
                                    str(kubeconfig), "--reports", str(reports), *extra])


def accept_only(cluster: FakeCluster, tmp_path: Path, env: Path, check: str, *extra: str):
    """`dcforge accept --only <check>` of the environment file `env` on the fake cluster: the command's outcome,
    the run's report and the check's entry in it."""
    outcome = CliRunner().invoke(app, ["accept", "--env-file", str(env), "--only", check, "--kubeconfig",
                                       str(kubeconfig_for(cluster.url, tmp_path)), "--reports",
                                       str(tmp_path / "reports"), *extra])
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    report = json.loads((report_dir / "report.json").read_text())
    (entry,) = [c for c in report["checks"] if c["name"] == check]
    return outcome, report, entry


def test_a_multinode_check_runs_as_an_indexed_job_and_reads_its_typed_result(cluster, tmp_path):
    kubeconfig = kubeconfig_for(cluster.url, tmp_path)
    with Kubelet(cluster, succeed_with_a_sweep(cluster, tmp_path)) as kubelet:
        outcome = accept(kubeconfig, tmp_path / "reports")
    assert outcome.exit_code == 0, outcome.output
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    report = json.loads((report_dir / "report.json").read_text())
    (check,) = [c for c in report["checks"] if c["name"] == "allreduce_multinode"]
    assert check["status"] == "pass" and check["details"]["executor"] == "kubernetes"
    assert check["metrics"]["busbw_gbps"]["value"] == 0.5  # from the record in the pod log
    assert 0 < check["details"]["api_requests"] < 40  # creates, watches, the logs: the wait polls nothing
    # each node row names the Kubernetes node its pod ran on: what --taint-failed taints
    assert [row["kubernetes_node"] for row in check["details"]["nodes"]] == ["cpu-node-0", "cpu-node-1"]
    (job,) = kubelet.jobs
    assert job["metadata"]["labels"][RUN_LABEL] == run_label_value(f"cluster-{report_dir.name}")
    assert job["metadata"]["labels"][EXECUTION_LABEL].startswith("allreduce-multinode-")
    assert job["spec"]["completions"] == 2
    assert labelled(cluster) == []  # deleted when the check passed


def test_a_pod_that_cannot_start_is_a_check_error_naming_it_and_the_live_view_shows_why(cluster, tmp_path):
    kubeconfig = kubeconfig_for(cluster.url, tmp_path)
    waiting = {"name": "node", "ready": False, "restartCount": 0, "image": "dcforge.local/dcforge:0.1.0-cpu",
               "imageID": ""}

    def play(pods: list[str]) -> None:
        for reason in ("ErrImagePull", "ImagePullBackOff"):  # the first may pass; the back-off is final
            for pod in pods:
                cluster.set_pod_status(NS, pod, {"phase": "Pending", "containerStatuses": [
                    {**waiting, "state": {"waiting": {"reason": reason, "message": "not found"}}}]})
            time.sleep(0.5)

    started = time.monotonic()
    with Kubelet(cluster, play):
        outcome = accept(kubeconfig, tmp_path / "reports")
    assert time.monotonic() - started < 60
    assert outcome.exit_code == 1, outcome.output
    assert "(ErrImagePull: not found)" in outcome.output  # the live view, while the pod waits
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    (check,) = [c for c in json.loads((report_dir / "report.json").read_text())["checks"]
                if c["name"] == "allreduce_multinode"]
    assert check["status"] == "error" and "\n" not in check["reason"]
    assert "pod dcf-allreduce-multinode-" in check["reason"] and "ImagePullBackOff: not found" in check["reason"]
    assert labelled(cluster) == []


def test_clean_deletes_every_labelled_object_of_earlier_runs_and_nothing_else(cluster, tmp_path):
    from kubernetes import client

    api = cluster.api_client("someone-else")
    for name, run in (("dcf-old-torchrun", "cluster-20261101t000000z"), ("dcf-older-torchrun", "x")):
        client.BatchV1Api(api).create_namespaced_job(NS, {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {RUN_LABEL: run}},
            "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "x:1"}]}}}})
    client.CoreV1Api(api).create_namespaced_pod(NS, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dcf-old-torchrun-0", "labels": {RUN_LABEL: "x"}},
        "spec": {"containers": [{"name": "x", "image": "x:1"}]}})
    client.CoreV1Api(api).create_namespaced_service(NS, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "not-ours"}, "spec": {"ports": [{"port": 80}]}})
    outcome = CliRunner().invoke(app, ["clean", "--env", "cluster", "--kubeconfig",
                                       str(kubeconfig_for(cluster.url, tmp_path))])
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.splitlines() == ["deleted Job/dcf-old-torchrun", "deleted Job/dcf-older-torchrun",
                                           "deleted Pod/dcf-old-torchrun-0",
                                           "dcforge clean: 3 objects of earlier runs deleted"]
    assert [o["metadata"]["name"] for o in cluster.objects(NS)] == ["not-ours"]


def dcforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DCFORGE_STACKS_DIR": str(REPO_ROOT / "stacks")})


def test_an_unreachable_cluster_and_a_missing_image_are_one_line_exit_2(tmp_path):
    kubeconfig = kubeconfig_for("http://127.0.0.1:9", tmp_path)  # the discard port: nothing listens
    cleaned = dcforge("clean", "--env", "cluster", "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert cleaned.returncode == 2, cleaned.stderr
    assert cleaned.stderr.startswith("error: clean --env cluster: listing Job labelled dcforge.io/run in namespace "
                                     "acceptance: ") and cleaned.stderr.count("\n") == 1
    text = (REPO_ROOT / "stacks" / "Pulumi.cluster.yaml").read_text()
    no_image = tmp_path / "Pulumi.noimage.yaml"
    no_image.write_text("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("image:")))
    refused = dcforge("accept", "--env-file", str(no_image), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (f"error: {no_image}: dcforge:acceptance.image: not set: target kubernetes runs the "
                              "checks' workloads in the acceptance image (README: the acceptance image); set a "
                              "pinned tag or digest\n")
    assert not (tmp_path / "reports").exists()  # refused before any check ran


@pytest.mark.parametrize("ending", ["timeout", "sigint"])
def test_a_check_ended_by_its_timeout_or_ctrl_c_leaves_no_labelled_object(cluster, tmp_path, env_file, ending):
    """Pods that stay Running until the check's time limit, or until Ctrl-C: the run's objects are deleted."""
    import signal

    env = env_file("cluster", replace={"  allreduce_multinode: 300,": "  allreduce_multinode: 3,"})
    running: list[str] = []

    def play(pods: list[str]) -> None:
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.30"})
        running.extend(pods)
        if ending == "sigint":
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

    started = time.monotonic()
    with Kubelet(cluster, play):
        outcome = CliRunner().invoke(app, ["accept", "--env-file", str(env), "--only", "allreduce_multinode",
                                           "--kubeconfig", str(kubeconfig_for(cluster.url, tmp_path)),
                                           "--reports", str(tmp_path / "reports")])
    assert time.monotonic() - started < 40
    assert running and labelled(cluster) == []
    assert outcome.exit_code == (1 if ending == "timeout" else 130), outcome.output
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    (check,) = [c for c in json.loads((report_dir / "report.json").read_text())["checks"]
                if c["name"] == "allreduce_multinode"]
    assert check["status"] == "error"
    assert ("timed out after 3 s" if ending == "timeout" else "interrupted by SIGINT") in check["reason"]


POOL = ("dcforge:gpuPools:\n"
        "    - {name: gpu-a, gpuModel: H100-SXM, gpusPerNode: 1, nodeCount: 3, labels: {dcforge.io/rack: r1}}")
POOL_LABELS = {POOL_LABEL: "gpu-a", "dcforge.io/rack": "r1"}


def pool_env(env_file, nodes: int) -> Path:
    """The cluster environment with a GPU pool (what pinning names nodes of) and slow_node on `nodes` nodes."""
    return env_file("cluster", replace={"dcforge:gpuPools: []": POOL,
                                        "slow_node: {nodes: 2}": f"slow_node: {{nodes: {nodes}}}"})


def fast_and_slow_sweeps(folder: Path) -> dict[str, str]:
    """What a pod logs: a sweep whose largest size reaches 1.0 GB/s (`fast`) and one of 0.1 GB/s (`slow`)."""
    logs = {}
    for name, busbw in (("fast", 1.0), ("slow", 0.1)):
        (folder / name).mkdir()
        line = json.loads(sweep_line())
        line["results"][0]["busbw_gbps"] = busbw
        (folder / name / ALLREDUCE_RESULT_FILE).write_text(json.dumps(line) + "\n")
        logs[name] = "\n".join(result_lines(folder / name)) + "\n"
    return logs


def pairs_on_pinned_nodes(cluster: FakeCluster, folder: Path, slow_node: str):
    """The scheduler and kubelets for slow_node's pairs: each pod bound to the node its affinity names; when both
    pods of a pair run, rank 0 logs a busbw of 0.1 GB/s where `slow_node` is in the pair, 1.0 otherwise."""
    logs = fast_and_slow_sweeps(folder)
    placed: dict[str, list[tuple[str, str, str]]] = {}
    affinities: list[dict] = []

    def play(pods: list[str]) -> None:
        (pod,) = pods  # one Job per pinned node
        obj = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)
        affinities.append(obj["spec"]["affinity"])
        node = cluster.pinned_node(NS, pod)
        cluster.bind_pod(NS, pod, node)
        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": f"10.244.0.{20 + len(affinities)}"})
        pair = placed.setdefault(obj["metadata"]["labels"][EXECUTION_LABEL], [])
        pair.append((obj["metadata"]["labels"][NODE_INDEX_LABEL], pod, node))
        if len(pair) == 2:
            (_, leader, _), _ = sorted(pair)
            cluster.write_log(NS, leader, logs["slow" if slow_node in {n for _, _, n in pair} else "fast"])
            for _, member, _ in pair:
                cluster.set_pod_status(NS, member, {"phase": "Succeeded"})
    return play, affinities


def test_slow_node_names_the_kubernetes_node_that_drags_its_pairs_down(cluster, tmp_path, env_file):
    """Three Ready nodes of the pool (and one not Ready, one outside it): every pair is pinned to its two nodes,
    the pairs with gpu-node-b are slow, and the report names gpu-node-b, as host and as kubernetes_node. The run
    needs no API access beyond the executor's Role and the node-listing ClusterRole."""
    from kubernetes import client

    for name in ("gpu-node-c", "gpu-node-a", "gpu-node-b"):
        cluster.add_node(name, POOL_LABELS)
    cluster.add_node("gpu-node-d", POOL_LABELS, ready=False)
    cluster.add_node("cpu-node-0", {"kubernetes.io/os": "linux"})
    agent = client.ApiClient().user_agent  # what the command line's client sends
    cluster.grant(agent, rbac_rules(EXECUTOR_API_ACCESS + NODE_LIST_ACCESS))
    play, affinities = pairs_on_pinned_nodes(cluster, tmp_path, slow_node="gpu-node-b")
    with Kubelet(cluster, play) as kubelet:
        outcome = CliRunner().invoke(app, ["accept", "--env-file", str(pool_env(env_file, 3)), "--only", "slow_node",
                                           "--kubeconfig", str(kubeconfig_for(cluster.url, tmp_path)),
                                           "--reports", str(tmp_path / "reports")])
    assert outcome.exit_code == 1, outcome.output
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    (check,) = [c for c in json.loads((report_dir / "report.json").read_text())["checks"] if c["name"] == "slow_node"]
    assert check["status"] == "fail" and check["details"]["culprit"] == "gpu-node-b", check
    assert "slow node: gpu-node-b" in check["reason"]
    assert [(row["host"], row["kubernetes_node"], row["verdict"]) for row in check["details"]["nodes"]] == [
        ("gpu-node-a", "gpu-node-a", "cleared"), ("gpu-node-b", "gpu-node-b", "slow"),
        ("gpu-node-c", "gpu-node-c", "cleared")]
    assert all(len(job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"]) == 1
        for job in kubelet.jobs) and len(affinities) == 2 * sum(len(r["pairs"]) for r in check["details"]["rounds"])
    assert labelled(cluster) == []
    assert not [r for r in cluster.api.requests_seen if r[0] == agent and r[1] == "?"]


def test_slow_node_asking_for_more_nodes_than_the_pool_has_ready_is_one_line(cluster, tmp_path, env_file):
    for name in ("gpu-node-a", "gpu-node-b"):
        cluster.add_node(name, POOL_LABELS)
    cluster.add_node("gpu-node-c", POOL_LABELS, unschedulable=True)  # cordoned
    outcome = CliRunner().invoke(app, ["accept", "--env-file", str(pool_env(env_file, 3)), "--only", "slow_node",
                                       "--kubeconfig", str(kubeconfig_for(cluster.url, tmp_path)),
                                       "--reports", str(tmp_path / "reports")])
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    (check,) = [c for c in json.loads((report_dir / "report.json").read_text())["checks"] if c["name"] == "slow_node"]
    assert check["status"] == "error", outcome.output
    assert check["reason"] == ("slow_node: dcforge:acceptance.settings.slow_node.nodes is 3, but the acceptance pool "
                               "gpu-a has 2 Ready, schedulable nodes (gpu-node-a, gpu-node-b)")
    assert labelled(cluster) == []


def test_network_pins_each_pair_server_and_client_to_their_named_nodes(cluster, tmp_path, env_file):
    """iperf3 between every pair of three pool nodes: node 0 (the server) on the pair's second node, node 1 (the
    client, whose output is read) on its first; the pairs with gpu-node-c are slow, so gpu-node-c is the outlier."""
    for name in ("gpu-node-a", "gpu-node-b", "gpu-node-c"):
        cluster.add_node(name, POOL_LABELS)
    placed: dict[str, dict[str, tuple[str, str]]] = {}
    clients: list[str] = []

    def play(pods: list[str]) -> None:
        (pod,) = pods
        obj = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)
        node = cluster.pinned_node(NS, pod)
        cluster.bind_pod(NS, pod, node)
        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.40"})
        pair = placed.setdefault(obj["metadata"]["labels"][EXECUTION_LABEL], {})
        pair[obj["metadata"]["labels"][NODE_INDEX_LABEL]] = (pod, node)
        if len(pair) == 2:
            client, client_node = pair["1"]
            clients.append(client_node)
            gbps = 1.0 if "gpu-node-c" in {node for _, node in pair.values()} else 9.0
            folder = tmp_path / client
            folder.mkdir()
            (folder / "iperf.json").write_text(json.dumps({"end": {"sum_received": {"bits_per_second": gbps * 1e9},
                                                                   "streams": [{"sender": {"mean_rtt": 80}}]}}))
            cluster.write_log(NS, client, "\n".join(result_lines(folder)) + "\n")
            for member, _ in pair.values():
                cluster.set_pod_status(NS, member, {"phase": "Succeeded"})

    env = env_file("cluster", replace={"dcforge:gpuPools: []": POOL, "network: {nodes: 2,": "network: {nodes: 3,"})
    with Kubelet(cluster, play):
        CliRunner().invoke(app, ["accept", "--env-file", str(env), "--only", "network", "--kubeconfig",
                                 str(kubeconfig_for(cluster.url, tmp_path)), "--reports", str(tmp_path / "reports")])
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    (check,) = [c for c in json.loads((report_dir / "report.json").read_text())["checks"] if c["name"] == "network"]
    assert check["status"] == "fail" and check["reason"].startswith("outliers: gpu-node-c "), check
    pairs = [p["nodes"] for p in check["details"]["pairs"]]
    assert pairs == [["gpu-node-a", "gpu-node-b"], ["gpu-node-a", "gpu-node-c"], ["gpu-node-b", "gpu-node-c"]]
    assert clients == [client for client, _ in pairs]  # each client pod ran on the node the pair names first
    assert [(r["host"], r["kubernetes_node"], r["outlier"]) for r in check["details"]["nodes"]] == [
        ("gpu-node-a", "gpu-node-a", False), ("gpu-node-b", "gpu-node-b", False), ("gpu-node-c", "gpu-node-c", True)]
    assert labelled(cluster) == []


def test_node_level_pins_each_node_workload_to_its_node_and_names_the_outlier(cluster, tmp_path, env_file):
    """node_level's all-reduce on every Ready node of the pool: one single-pod Job per node, pinned there by name;
    gpu-node-b's sweep is a tenth of the others', so its row is the outlier, named as host and kubernetes_node.
    gpu-node-c, quarantined by an earlier `--taint-failed`, is tested again (node_level's pods tolerate that taint,
    so it can pass and be untainted); a node with another taint is not."""
    from dcforge.executors.kubernetes_objects import QUARANTINE_TOLERATION, TAINT

    for name in ("gpu-node-a", "gpu-node-b"):
        cluster.add_node(name, POOL_LABELS)
    cluster.add_node("gpu-node-c", POOL_LABELS, taints=[dict(TAINT)])
    cluster.add_node("gpu-node-d", POOL_LABELS, ready=False)
    cluster.add_node("gpu-node-e", POOL_LABELS, taints=[{"key": "maintenance", "effect": "NoSchedule"}])
    logs = fast_and_slow_sweeps(tmp_path)
    placed: list[str] = []
    pod_specs: list[dict] = []

    def play(pods: list[str]) -> None:
        (pod,) = pods  # one Job per pinned node
        node = cluster.pinned_node(NS, pod)
        placed.append(node)
        pod_specs.append(next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)["spec"])
        cluster.bind_pod(NS, pod, node)
        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.50"})
        cluster.write_log(NS, pod, logs["slow" if node == "gpu-node-b" else "fast"])
        cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})

    env = env_file("cluster", replace={
        "dcforge:gpuPools: []": POOL.replace("gpusPerNode: 1", "gpusPerNode: 4"),
        "checks: [system,": "checks: [node_level, system,",
        "      slow_node: {nodes: 2}": "      slow_node: {nodes: 2}\n      node_level: {workloads: [allreduce]}"})
    with Kubelet(cluster, play):
        outcome, report, check = accept_only(cluster, tmp_path, env, "node_level", "--taint-failed")
    assert outcome.exit_code == 1, outcome.output
    # the outlier is quarantined; the quarantined node that passed is released
    assert (report["remediation"]["tainted"], report["remediation"]["untainted"]) == (["gpu-node-b"], ["gpu-node-c"])
    taints = {o["metadata"]["name"]: o["spec"]["taints"] for o in cluster.objects() if o["kind"] == "Node"}
    assert TAINT in taints["gpu-node-b"] and TAINT not in taints["gpu-node-c"] and taints["gpu-node-a"] == []
    assert check["status"] == "fail" and check["reason"].startswith("outliers: gpu-node-b (busbw_gbps 0.1"), check
    assert sorted(placed) == ["gpu-node-a", "gpu-node-b", "gpu-node-c"]  # d is not Ready, e's taint repels
    for pod_spec in pod_specs:
        assert QUARANTINE_TOLERATION in pod_spec["tolerations"]
        (container,) = pod_spec["containers"]  # a whole machine of the pool: its 4 GPUs, a rank on each
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert "--nproc-per-node=4" in " ".join(container["command"] + container.get("args", []))
    assert [(r["host"], r["kubernetes_node"], r["outlier"]) for r in check["details"]["nodes"]] == [
        ("gpu-node-a", "gpu-node-a", False), ("gpu-node-b", "gpu-node-b", True), ("gpu-node-c", "gpu-node-c", False)]
    assert check["metrics"]["busbw_gbps.min"]["value"] == 0.1 and check["metrics"]["busbw_gbps.median"]["value"] == 1
    assert check["details"]["executor"] == "kubernetes"
    assert labelled(cluster) == []


def test_node_level_on_kubernetes_without_a_gpu_pool_is_skipped_with_its_reason(cluster, tmp_path, env_file):
    env = env_file("cluster", replace={"checks: [system,": "checks: [node_level, system,"})
    outcome, _, check = accept_only(cluster, tmp_path, env, "node_level")
    assert check["status"] == "skipped", outcome.output
    assert check["reason"] == ("node_level on target kubernetes pins one pod to each node of the acceptance pool, "
                               "and the spec declares no GPU pool (dcforge:gpuPools)")
    assert labelled(cluster) == []


def test_node_level_asking_for_more_nodes_than_the_pool_has_ready_is_one_line(cluster, tmp_path, env_file):
    """The refusal is the check's error in one line naming the key and the nodes there are: no traceback."""
    cluster.add_node("gpu-node-a", POOL_LABELS)
    cluster.add_node("gpu-node-b", POOL_LABELS, ready=False)
    env = env_file("cluster", replace={
        "dcforge:gpuPools: []": POOL, "checks: [system,": "checks: [node_level, system,",
        "      slow_node: {nodes: 2}": "      slow_node: {nodes: 2}\n      node_level: {nodes: 2}"})
    outcome, _, check = accept_only(cluster, tmp_path, env, "node_level")
    assert check["status"] == "error", outcome.output
    assert check["reason"] == ("node_level: dcforge:acceptance.settings.node_level.nodes is 2, but the acceptance "
                               "pool gpu-a has 1 Ready, schedulable nodes (gpu-node-a)")
    assert "traceback" not in check["artefacts"]
    assert labelled(cluster) == []
