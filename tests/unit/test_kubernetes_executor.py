"""The kubernetes executor against a stateful fake of the Kubernetes API over HTTP (kmock, tests/kube_fake.py).

The official client talks to the fake exactly as to a cluster. The tests play the cluster's controllers and kubelets
through the same API (pods for a Job, phases, events, logs) and check what the executor makes of it: objects
created in order, statuses with reasons naming the pod, results read back from logs, nothing labelled left after
the run, and no API access beyond `EXECUTOR_API_ACCESS` (which the Acceptance Role grants).
"""

from __future__ import annotations

import re
import threading
import time

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from dcforge.executors.base import ExecutorError, NodeState, Readiness, Role, VolumePurpose, Workload  # noqa: E402
from dcforge.executors.kubernetes import EXECUTOR_API_ACCESS, KubernetesExecutor, client_from_kubeconfig  # noqa: E402
from dcforge.executors.kubernetes_access import NODE_LIST_ACCESS, rbac_rules  # noqa: E402
from dcforge.executors.kubernetes_objects import EXECUTION_LABEL, RUN_LABEL, object_name, pool_selector  # noqa: E402
from dcforge.executors.pod_results import result_lines  # noqa: E402
from dcforge.manifests.acceptance import HARNESS_NAME  # noqa: E402
from dcforge.placement.torchrun import TorchrunJob, torchrun_workload  # noqa: E402
from dcforge.manifests.build import acceptance  # noqa: E402
from dcforge.spec import load_environment  # noqa: E402
from dcforge.spec.models import Environment  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402

NS = "acceptance"
RUN = "report-42"


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        yield fake


@pytest.fixture
def spec() -> Environment:
    data = load_environment("dev").spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "image": "registry.example/dcforge:0.1.0"}
    return Environment.model_validate(data)


def executor(spec: Environment, cluster: FakeCluster, unschedulable_grace_s: float = 1.0) -> KubernetesExecutor:
    return KubernetesExecutor(spec, RUN, cluster.api_client(), grace_s=0, stop_timeout_s=10,
                              unschedulable_grace_s=unschedulable_grace_s)


def training(nodes: int = 2) -> Workload:
    return torchrun_workload("train", TorchrunJob("train.py", ("--out", "{volume[results]}/train.json"),
                                                  nnodes=nodes, timeout_s=30))


def labelled(cluster: FakeCluster) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in cluster.objects(NS)
                  if (o["metadata"].get("labels") or {}).get(RUN_LABEL) == RUN)


def until(condition, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def job_name(execution, role: str = "torchrun") -> str:
    """The name of a role's Job or Deployment in this execution (`dcf-<execution scope>-<role>`)."""
    return object_name(execution.target, role)


def test_objects_are_created_in_order_and_stop_leaves_none(spec, cluster, tmp_path):
    with executor(spec, cluster).start(training(), tmp_path) as execution:
        kinds = [o["kind"] for o in cluster.objects(NS)]
        assert sorted(kinds) == ["Job", "NetworkPolicy", "PersistentVolumeClaim", "Service"]
        creates = [(group, resource) for agent, verb, group, resource in cluster.api.requests_seen
                   if verb == "create" and agent == "dcforge-test"]
        assert creates == [("networking.k8s.io", "networkpolicies"), ("", "persistentvolumeclaims"),
                           ("", "services"), ("batch", "jobs")]
        (service,) = [o for o in cluster.objects(NS) if o["kind"] == "Service"]
        (job,) = [o for o in cluster.objects(NS) if o["kind"] == "Job"]
        leader = service["spec"]["clusterIP"]
        assert execution.leader_addresses == {"torchrun": leader}
        assert f"--rdzv-endpoint={leader}:29400" in job["spec"]["template"]["spec"]["containers"][0]["command"][2]
        cluster.start_job_pods(NS, job["metadata"]["name"])
        until(lambda: len([o for o in cluster.objects(NS) if o["kind"] == "Pod"]) == 2)
    assert labelled(cluster) == []
    assert execution.leftovers == []


def test_a_run_reports_phases_and_reads_results_from_the_logs(spec, cluster, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "train.json").write_text('{"kind": "train.result", "loss": 1.5}\n')
    seen: list[list[str]] = []
    with executor(spec, cluster).start(training(), tmp_path / "run") as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        until(lambda: all(s.host in pods for s in execution.statuses()))
        assert {s.state for s in execution.statuses()} == {NodeState.PENDING}
        for index, pod in enumerate(pods):
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": f"10.244.0.{10 + index}"})
        until(lambda: {s.state for s in execution.statuses()} == {NodeState.RUNNING})
        assert [s.address for s in execution.statuses()] == ["10.244.0.10", "10.244.0.11"]
        cluster.write_log(NS, pods[0], "step 1 loss 2.0\n" + "\n".join(result_lines(results)) + "\n")
        cluster.write_log(NS, pods[1], "step 1 loss 2.0\n")
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
        outcome = execution.wait(10, on_status=lambda nodes: seen.append([n.state.value for n in nodes]))
        assert outcome.succeeded and seen[-1] == ["succeeded", "succeeded"]
        assert execution.read_result("torchrun", 0, "train.json") == b'{"kind": "train.result", "loss": 1.5}\n'
        with pytest.raises(ExecutorError, match=f"torchrun/1 on pod {pods[1]}: no result file train.json"):
            execution.read_result("torchrun", 1, "train.json")
        assert (tmp_path / "run" / "torchrun-1.log").read_text() == "step 1 loss 2.0\n"
        assert execution.api_requests < 40  # a watch, not polling: the wait itself asks the API nothing
    assert labelled(cluster) == []


@pytest.mark.parametrize("running_s", [0.2, 3.0])
def test_the_api_requests_of_a_run_do_not_grow_with_its_wait(spec, cluster, tmp_path, running_s):
    """The same run with its pods Running for 0.2 s or for 3 s (15 poll intervals of the wait) asks the API the
    same number of times: the wait reads a watch's cache, it does not poll the API."""
    with executor(spec, cluster).start(training(), tmp_path / "run") as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.12"})
        until(lambda: {s.state for s in execution.statuses()} == {NodeState.RUNNING})
        before = execution.api_requests
        finish = threading.Timer(running_s, lambda: [cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
                                                     for pod in pods])
        finish.start()
        assert execution.wait(10).succeeded
        finish.join()
        assert execution.api_requests - before <= len(pods)  # the wait: at most reading each node's log at its end


UNSCHEDULABLE = {"phase": "Pending", "conditions": [{
    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
IMAGE_PULL = {"phase": "Pending", "containerStatuses": [{"name": "node", "ready": False, "restartCount": 0,
              "image": "registry.example/dcforge:0.1.0", "imageID": "", "state": {"waiting": {
                  "reason": "ImagePullBackOff",
                  "message": "Back-off pulling image \"registry.example/dcforge:0.1.0\""}}}]}
CRASH_LOOP = {"phase": "Running", "containerStatuses": [{"name": "node", "ready": False, "restartCount": 3,
              "image": "i", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
              "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}
OOM_KILLED = {"phase": "Failed", "containerStatuses": [{"name": "node", "ready": False, "restartCount": 0,
              "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}


@pytest.mark.parametrize("status, reason, code", [
    (UNSCHEDULABLE, "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", None),
    (IMAGE_PULL, "ImagePullBackOff: Back-off pulling image", None),
    (CRASH_LOOP, "CrashLoopBackOff (last exit: Error, code 1): back-off", 1),
    (OOM_KILLED, "OOMKilled", 137),
], ids=["unschedulable", "image-pull", "crash-loop", "oom-killed"])
def test_a_pod_that_cannot_run_fails_its_node_at_once_with_the_reason(spec, cluster, tmp_path, status, reason, code):
    with executor(spec, cluster).start(training(), tmp_path) as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        cluster.set_pod_status(NS, pods[1], {"phase": "Running", "podIP": "10.244.0.2"})
        cluster.set_pod_status(NS, pods[0], status)
        started = time.monotonic()
        outcome = execution.wait(30)
        assert time.monotonic() - started < 10 and not outcome.timed_out
        first, second = outcome.nodes
        assert first.state is NodeState.FAILED and first.exit_code == code
        assert first.reason.startswith(f"pod {pods[0]}: {reason}") and "\n" not in first.reason
        assert second.state is NodeState.KILLED  # the first failure stops the other ranks
    assert labelled(cluster) == []


def test_a_pod_unschedulable_for_a_moment_is_not_a_failure(spec, cluster, tmp_path):
    """A claim being provisioned makes a pod Unschedulable for a few seconds; only a lasting state fails it."""
    with executor(spec, cluster, unschedulable_grace_s=2.0).start(training(1), tmp_path) as execution:
        (pod,) = cluster.start_job_pods(NS, job_name(execution))
        cluster.set_pod_status(NS, pod, UNSCHEDULABLE)
        until(lambda: execution.statuses()[0].host == pod)
        time.sleep(0.5)
        assert execution.statuses()[0].state is NodeState.PENDING
        cluster.set_pod_status(NS, pod, {"phase": "Running", "conditions": [{"type": "PodScheduled",
                                                                              "status": "True"}]})
        until(lambda: execution.statuses()[0].state is NodeState.RUNNING)
        time.sleep(2.0)
        assert execution.statuses()[0].state is NodeState.RUNNING


def test_pods_refused_at_admission_fail_the_role_with_the_event(spec, cluster, tmp_path):
    message = ('pods "dcf-report-42-torchrun-0-x" is forbidden: violates PodSecurity "restricted:v1.31": '
               'unrestricted capabilities (container "node" must not include "IPC_LOCK")')
    with executor(spec, cluster).start(training(), tmp_path) as execution:
        cluster.add_event(NS, "Job", job_name(execution), "FailedCreate", message)
        outcome = execution.wait(30)
        assert [n.state for n in outcome.nodes] == [NodeState.FAILED, NodeState.FAILED]
        assert outcome.nodes[0].reason == f"Job {job_name(execution)}: FailedCreate: {message}"
    assert labelled(cluster) == []


def test_a_rejected_replica_set_fails_only_its_deployment_role(spec, cluster, tmp_path):
    server = Role("server", ("serve", "{port[http]}"), ports=("http",), readiness=Readiness(port="http"))
    server_b = Role("server-b", ("serve", "{port[http]}"), ports=("http",), readiness=Readiness(port="http"))
    workload = Workload("inference", (server, server_b), volumes=(VolumePurpose.SCRATCH,))
    with executor(spec, cluster).start(workload, tmp_path) as execution:
        rejected = f"{job_name(execution, 'server-b')}-7c9f5d8b4"
        cluster.add_event(NS, "ReplicaSet", rejected, "FailedCreate", 'pods "x" is forbidden: exceeded quota')
        until(lambda: execution.statuses()[1].state is NodeState.FAILED)
        assert execution.statuses()[1].reason == (f"ReplicaSet {rejected}: FailedCreate: pods \"x\" is forbidden: "
                                                  "exceeded quota")
        assert execution.statuses()[0].state is NodeState.PENDING


def test_kill_node_deletes_that_pod_and_the_timeout_kills_the_rest(spec, cluster, tmp_path):
    with executor(spec, cluster).start(training(), tmp_path) as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.9"})
        until(lambda: {s.state for s in execution.statuses()} == {NodeState.RUNNING})
        execution.kill_node("torchrun", 1)
        assert pods[1] not in [o["metadata"]["name"] for o in cluster.objects(NS)]
        assert [s.state for s in execution.statuses()] == [NodeState.RUNNING, NodeState.KILLED]
        outcome = execution.wait(0.5)
        assert [n.state for n in outcome.nodes] == [NodeState.KILLED, NodeState.KILLED]
    assert labelled(cluster) == []


def test_a_pod_deleted_by_someone_else_fails_its_node(spec, cluster, tmp_path):
    from kubernetes import client

    with executor(spec, cluster).start(training(), tmp_path) as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        until(lambda: all(s.host in pods for s in execution.statuses()))
        client.CoreV1Api(cluster.api_client("evictor")).delete_namespaced_pod(pods[0], NS)
        outcome = execution.wait(10)
        assert outcome.nodes[0].state is NodeState.FAILED
        assert outcome.nodes[0].reason == f"pod {pods[0]} was deleted, not by dcforge"
    assert labelled(cluster) == []


def test_stop_after_an_exception_in_the_with_block_leaves_nothing(spec, cluster, tmp_path):
    with pytest.raises(RuntimeError, match="check crashed"):
        with executor(spec, cluster).start(training(3), tmp_path) as execution:
            cluster.start_job_pods(NS, job_name(execution))
            until(lambda: len(labelled(cluster)) == 7)  # policy, claim, service, job, 3 pods
            raise RuntimeError("check crashed")
    assert labelled(cluster) == []


def test_a_server_role_is_ready_when_its_pods_are(spec, cluster, tmp_path):
    server = Role("server", ("{python}", "-m", "workloads.serving", "--port", "{port[http]}"), nodes=2,
                  ports=("http",), readiness=Readiness(port="http", timeout_s=1.5))
    workload = Workload("inference", (server,), volumes=(VolumePurpose.SCRATCH,))
    with executor(spec, cluster).start(workload, tmp_path) as execution:
        (deployment,) = [o for o in cluster.objects(NS) if o["kind"] == "Deployment"]
        pods = cluster.start_deployment_pods(NS, deployment["metadata"]["name"])
        ready = {"phase": "Running", "podIP": "10.244.1.1", "conditions": [{"type": "Ready", "status": "True"}]}
        cluster.set_pod_status(NS, pods[0], ready)
        cluster.set_pod_status(NS, pods[1], {**ready, "conditions": [{"type": "Ready", "status": "False"}]})
        until(lambda: len([s for s in execution.statuses() if s.state is NodeState.RUNNING]) == 2)
        with pytest.raises(ExecutorError, match=r"server/\d on dcf-inference-[0-9a-f]{6}-server-\S+ not ready "
                                                r"\(port http\) "
                                                r"within 1.5 s"):
            execution.wait_ready("server")
        cluster.set_pod_status(NS, pods[1], ready)
        until(lambda: execution.wait_ready("server") is None)
    assert labelled(cluster) == []


def test_creation_refused_by_the_api_is_one_line_and_cleans_up(spec, cluster, tmp_path):
    """RBAC refuses the Job (the Role lacks it): one line naming it, and what was created before is gone again;
    another run's objects are left alone."""
    from kubernetes import client

    (role,) = [m for m in acceptance(spec).manifests if m["kind"] == "Role" and m["metadata"]["name"] == HARNESS_NAME]
    rules = [{**rule, "verbs": [v for v in rule["verbs"] if not (rule["resources"] == ["jobs"] and v == "create")]}
             for rule in role["rules"]]
    cluster.grant("dcforge-test", rules)
    client.BatchV1Api(cluster.api_client("someone-else")).create_namespaced_job(NS, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "other", "labels": {RUN_LABEL: "other-run"}},
        "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "x:1"}]}}}})
    with pytest.raises(ExecutorError) as caught:
        executor(spec, cluster).start(training(), tmp_path)
    assert re.match(r"creating Job/dcf-train-[0-9a-f]{6}-torchrun in namespace acceptance: HTTP 403: jobs is "
                    r"forbidden", str(caught.value)), caught.value
    assert "\n" not in str(caught.value)
    assert labelled(cluster) == []  # the policy, claim and service created before it are gone again
    assert [o["metadata"]["name"] for o in cluster.objects(NS)] == ["other"]  # not ours: left alone


def test_the_executor_uses_only_the_declared_api_access(spec, cluster, tmp_path):
    """Everything a run asks of the API is in EXECUTOR_API_ACCESS, which the Acceptance Role grants."""
    with executor(spec, cluster).start(training(), tmp_path) as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        cluster.write_log(NS, pods[0], "")
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
        execution.wait(10)
        execution.kill_node("torchrun", 0)
        with pytest.raises(ExecutorError):
            execution.read_result("torchrun", 0, "missing.json")
    granted = {(a.group, resource, verb) for a in EXECUTOR_API_ACCESS for resource in a.resources for verb in a.verbs}
    used = {(group, resource, verb) for agent, verb, group, resource in cluster.api.requests_seen
            if agent == "dcforge-test"}
    assert used <= granted, used - granted
    assert {("batch", "jobs", "create"), ("", "pods", "watch"), ("", "pods/log", "get"),
            ("", "pods", "delete")} <= used


def test_the_executor_works_with_only_the_acceptance_role(spec, cluster, tmp_path):
    """The Role the stack declares (dcforge/manifests/acceptance.py) is enough for a whole run: the fake answers
    403 to anything else, as RBAC would."""
    (role,) = [m for m in acceptance(spec).manifests if m["kind"] == "Role" and m["metadata"]["name"] == HARNESS_NAME]
    cluster.grant("dcforge-test", role["rules"])
    results = tmp_path / "results"
    results.mkdir()
    (results / "train.json").write_text("{}\n")
    with executor(spec, cluster).start(training(), tmp_path / "run") as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        cluster.write_log(NS, pods[0], "\n".join(result_lines(results)) + "\n")
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
        assert execution.wait(10).succeeded
        assert execution.read_result("torchrun", 0, "train.json") == b"{}\n"
        execution.kill_node("torchrun", 1)
    assert labelled(cluster) == [] and execution.leftovers == []
    assert not [r for r in cluster.api.requests_seen if r[0] == "dcforge-test" and r[1] == "?"]


def test_a_watch_the_role_forbids_is_an_error_not_a_silent_wait(spec, cluster, tmp_path):
    (role,) = [m for m in acceptance(spec).manifests if m["kind"] == "Role" and m["metadata"]["name"] == HARNESS_NAME]
    rules = [{**rule, "verbs": [v for v in rule["verbs"] if not (rule["resources"] == ["pods"] and v == "watch")]}
             for rule in role["rules"]]
    cluster.grant("dcforge-test", rules)
    with executor(spec, cluster).start(training(), tmp_path) as execution:
        started = time.monotonic()
        with pytest.raises(ExecutorError, match=r'^watching pods in namespace acceptance: HTTP 403: pods is '
                                                r'forbidden: User "dcforge-test" cannot watch resource "pods"'):
            execution.wait(30)
        assert time.monotonic() - started < 10
    assert labelled(cluster) == []


def test_missing_image_and_bad_kubeconfig_are_one_line_errors(spec, tmp_path):
    data = spec.model_dump(by_alias=True)
    data["acceptance"]["image"] = None
    data["acceptance"]["schedule"] = []  # a schedule without an image is refused by the spec itself
    with pytest.raises(ExecutorError, match="^dcforge:acceptance.image is not set"):
        KubernetesExecutor(Environment.model_validate(data), RUN)
    with pytest.raises(ExecutorError, match=f"^kubeconfig {tmp_path}/none.yaml: "):
        client_from_kubeconfig(str(tmp_path / "none.yaml"))


def test_executions_at_once_keep_to_their_own_objects(spec, cluster, tmp_path):
    """slow_node runs its pairs at once through one executor: each execution has its own names, selectors and
    cleanup, all under the one run label."""
    runner = executor(spec, cluster)
    with runner.start(training(), tmp_path / "a") as first, runner.start(training(), tmp_path / "b") as second:
        assert job_name(first) != job_name(second)
        first_pods = cluster.start_job_pods(NS, job_name(first))
        second_pods = cluster.start_job_pods(NS, job_name(second))
        for pod in first_pods:
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
        assert first.wait(10).succeeded
        assert [s.host for s in first.statuses()] == first_pods
        until(lambda: [s.host for s in second.statuses()] == second_pods)
        assert {s.state for s in second.statuses()} == {NodeState.PENDING}
        first.stop()
        assert len(labelled(cluster)) == 6  # the second's policy, claim, service, job and 2 pods
        (service,) = [o for o in cluster.objects(NS) if o["kind"] == "Service"]
        assert service["spec"]["selector"][EXECUTION_LABEL] == second.target.scope
    assert labelled(cluster) == []


def test_the_live_view_gets_why_a_pod_waits(spec, cluster, tmp_path):
    seen: list[list[str]] = []
    with executor(spec, cluster).start(training(1), tmp_path) as execution:
        (pod,) = cluster.start_job_pods(NS, job_name(execution))
        cluster.set_pod_status(NS, pod, {"phase": "Pending", "containerStatuses": [{
            "name": "node", "ready": False, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "ContainerCreating"}}}]})
        until(lambda: execution.statuses()[0].reason == "ContainerCreating")
        assert execution.statuses()[0].state is NodeState.PENDING

        def kubelet() -> None:
            time.sleep(0.5)
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})

        threading.Thread(target=kubelet).start()
        assert execution.wait(10, on_status=lambda nodes: seen.append([n.reason for n in nodes])).succeeded
    assert seen[0] == ["ContainerCreating"] and seen[-1] == [""]


def test_a_pinned_executor_runs_node_i_on_the_ith_named_node_with_only_the_declared_access(spec, cluster, tmp_path):
    """`pool_nodes` lists the pool's nodes (by its labels) that are Ready, not cordoned and carry no taint the pods
    do not tolerate; `pinned` puts node i on nodes[i] (one Job per node); the whole run needs exactly
    EXECUTOR_API_ACCESS and NODE_LIST_ACCESS (403 for anything else)."""
    labels = pool_selector(spec.acceptance_pool)
    gpu = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}  # the pool's own: tolerated
    failed = {"key": "dcforge.io/acceptance", "value": "failed", "effect": "NoSchedule"}  # --taint-failed's: not
    for name, extra in (("gpu-c", {"taints": [gpu]}), ("gpu-a", {}), ("gpu-b", {}), ("gpu-down", {"ready": False}),
                        ("gpu-cordoned", {"unschedulable": True}), ("gpu-failed", {"taints": [gpu, failed]})):
        cluster.add_node(name, labels, **extra)
    cluster.add_node("cpu-x", {"kubernetes.io/os": "linux"})
    cluster.grant("dcforge-test", rbac_rules(EXECUTOR_API_ACCESS + NODE_LIST_ACCESS))
    names = executor(spec, cluster).pool_nodes()
    assert names == ["gpu-a", "gpu-b", "gpu-c"]
    results = tmp_path / "results"
    results.mkdir()
    (results / "train.json").write_text("{}\n")
    with executor(spec, cluster).pinned(["gpu-c", "gpu-a"]).start(training(), tmp_path / "run") as execution:
        jobs = sorted(o["metadata"]["name"] for o in cluster.objects(NS) if o["kind"] == "Job")
        pods = [pod for job in jobs for pod in cluster.start_job_pods(NS, job)]
        for pod in pods:
            cluster.bind_pod(NS, pod, cluster.pinned_node(NS, pod))  # the scheduler honours the affinity
        cluster.write_log(NS, pods[0], "\n".join(result_lines(results)) + "\n")
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
        outcome = execution.wait(10)
        assert outcome.succeeded
        assert [(s.index, s.kubernetes_node) for s in outcome.nodes] == [(0, "gpu-c"), (1, "gpu-a")]
        assert execution.read_result("torchrun", 0, "train.json") == b"{}\n"
    assert labelled(cluster) == [] and execution.leftovers == []
    denied = [r for r in cluster.api.requests_seen if r[0] == "dcforge-test" and r[1] == "?"]
    assert not denied
    assert ("dcforge-test", "list", "", "nodes") in cluster.api.requests_seen


def test_a_load_role_reaches_the_server_service_with_the_secret_mounted(spec, cluster, tmp_path):
    """A server Deployment and a load Job in one workload: the load's `{role_address[server]}` is the server
    Service's cluster IP, the API key is a Secret (created after the controllers, owned by the first, so the
    garbage collector removes it with them), mounted read-only, never in a spec; `wait(roles=["load"])` returns
    while the server runs; the Acceptance Role suffices and nothing is left."""
    (role,) = [m for m in acceptance(spec).manifests if m["kind"] == "Role" and m["metadata"]["name"] == HARNESS_NAME]
    cluster.grant("dcforge-test", role["rules"])
    server = Role("server", ("{python}", "-m", "workloads.serve", "--port", "{port[http]}"), ports=("http",),
                  env={"DCFORGE_API_KEY_FILE": "{volume[secrets]}/api-key"}, readiness=Readiness(port="http"))
    load = Role("load", ("{python}", "-m", "locust", "--host",
                         "http://{role_address[server]}:{role_port[server][http]}"),
                env={"LLM_API_KEY_FILE": "{volume[secrets]}/api-key"})
    workload = Workload("inference", (server, load), volumes=(VolumePurpose.SCRATCH, VolumePurpose.SECRETS),
                        secrets={"api-key": b"k3y-material"})
    with executor(spec, cluster).start(workload, tmp_path) as execution:
        by_kind = {o["kind"]: o for o in cluster.objects(NS)}
        secret, service, job = by_kind["Secret"], by_kind["Service"], by_kind["Job"]
        deployment = by_kind["Deployment"]
        assert secret["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                           "name": deployment["metadata"]["name"],
                                                           "uid": deployment["metadata"]["uid"]}]
        assert secret["data"] == {"api-key": "azN5LW1hdGVyaWFs"}
        assert "k3y" not in str([o for o in cluster.objects(NS) if o["kind"] != "Secret"])
        pod_spec = job["spec"]["template"]["spec"]
        assert f"http://{service['spec']['clusterIP']}:29400" in pod_spec["containers"][0]["command"][2]
        assert {"name": "secrets", "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o440}} in \
            pod_spec["volumes"]
        assert {"name": "secrets", "mountPath": "/dcforge/secrets", "readOnly": True} in \
            pod_spec["containers"][0]["volumeMounts"]
        (server_pod,) = cluster.start_deployment_pods(NS, deployment["metadata"]["name"])
        (load_pod,) = cluster.start_job_pods(NS, job["metadata"]["name"])
        cluster.set_pod_status(NS, server_pod, {"phase": "Running", "podIP": "10.244.1.1"})
        cluster.set_pod_status(NS, load_pod, {"phase": "Succeeded"})
        outcome = execution.wait(10, roles=["load"])
        assert {s.role: s.state for s in outcome.nodes} == {"server": NodeState.RUNNING, "load": NodeState.SUCCEEDED}
    assert labelled(cluster) == [] and execution.leftovers == []
    creates = [resource for agent, verb, _, resource in cluster.api.requests_seen
               if agent == "dcforge-test" and verb == "create"]
    assert creates.index("secrets") > creates.index("jobs")
    assert not {verb for agent, verb, _, resource in cluster.api.requests_seen
                if agent == "dcforge-test" and resource == "secrets"} - {"create", "delete"}


def test_a_role_address_of_a_role_without_a_service_is_one_line(spec, cluster, tmp_path):
    load = Role("load", ("{python}", "-m", "locust", "--host", "http://{role_address[server]}"))
    with pytest.raises(ExecutorError, match=r"role 'load': \{role_address\[server\]\}: the workload has no role "
                                            r"'server' with ports"):
        executor(spec, cluster).start(Workload("inference", (load,)), tmp_path)
    assert labelled(cluster) == []


def test_a_killed_server_pod_is_replaced_and_its_node_comes_back(spec, cluster, tmp_path):
    """Deleting a server's pod (failure injection under load) does not end the run: the Deployment replaces it, the
    node is pending, then running and Ready in the new pod; the probe is an HTTP GET of the readiness path; the
    current pod's log is readable while it runs."""
    server = Role("server", ("{python}", "-m", "workloads.serve", "--port", "{port[http]}"), nodes=2,
                  ports=("http",), readiness=Readiness(port="http", http_path="/ready", timeout_s=10))
    workload = Workload("inference", (server,), volumes=(VolumePurpose.SCRATCH,))
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    with executor(spec, cluster).start(workload, tmp_path) as execution:
        (deployment,) = [o for o in cluster.objects(NS) if o["kind"] == "Deployment"]
        probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert probe["httpGet"] == {"path": "/ready", "port": 29400}
        pods = cluster.start_deployment_pods(NS, deployment["metadata"]["name"])
        for number, pod in enumerate(pods):
            cluster.set_pod_status(NS, pod, {**ready, "podIP": f"10.244.1.{number + 1}"})
        execution.wait_ready("server")
        victim = execution.statuses()[1]
        cluster.write_log(NS, victim.host, "serving\n")
        assert execution.read_log("server", 1) == "serving\n"
        execution.kill_node("server", 1)
        until(lambda: [s.state for s in execution.statuses()] == [NodeState.RUNNING, NodeState.PENDING])
        (replacement,) = cluster.start_deployment_pods(NS, deployment["metadata"]["name"], count=1)
        cluster.set_pod_status(NS, replacement, {**ready, "podIP": "10.244.1.9"})
        until(lambda: [s.state for s in execution.statuses()] == [NodeState.RUNNING] * 2)
        execution.wait_ready("server")
        survivor = {"10.244.1.1", "10.244.1.2"} - {victim.address}
        assert {s.address for s in execution.statuses()} == survivor | {"10.244.1.9"}
        assert victim.host not in {s.host for s in execution.statuses()}
        assert execution.read_log("server", 1) == ""  # the new pod has logged nothing yet
    assert labelled(cluster) == []


def test_a_job_node_with_replacements_comes_back_in_the_jobs_new_pod(spec, cluster, tmp_path):
    """A role with one replacement: its Job may replace a pod once (backoffLimit 1); the pod dcforge deletes is
    followed by the Job's new pod of the same index, the node is pending then running there, and the run goes on
    to succeed. A second kill is final."""
    role = Role("train", ("{python}", "train.py"), replacements=1)
    with executor(spec, cluster).start(Workload("failover", (role,)), tmp_path) as execution:
        (job,) = [o for o in cluster.objects(NS) if o["kind"] == "Job"]
        assert job["spec"]["backoffLimit"] == 1
        (first,) = cluster.start_job_pods(NS, job["metadata"]["name"])
        cluster.set_pod_status(NS, first, {"phase": "Running", "podIP": "10.244.2.1"})
        until(lambda: execution.statuses()[0].state is NodeState.RUNNING)
        execution.kill_node("train", 0)
        until(lambda: execution.statuses()[0].state is NodeState.PENDING)
        until(lambda: first not in {o["metadata"]["name"] for o in cluster.objects(NS)})
        assert execution.statuses()[0].state is NodeState.PENDING  # the deleted pod is not a failure
        (second,) = cluster.start_job_pods(NS, job["metadata"]["name"])
        cluster.set_pod_status(NS, second, {"phase": "Running", "podIP": "10.244.2.2"})
        until(lambda: execution.statuses()[0].host == second)
        cluster.set_pod_status(NS, second, {"phase": "Succeeded"})
        assert execution.wait(10).succeeded
    assert labelled(cluster) == []
    with executor(spec, cluster).start(Workload("failover", (role,)), tmp_path / "again") as execution:
        (job,) = [o for o in cluster.objects(NS) if o["kind"] == "Job"]
        for number in range(2):
            (pod,) = cluster.start_job_pods(NS, job["metadata"]["name"])
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": f"10.244.2.{3 + number}"})
            until(lambda: execution.statuses()[0].host == pod and execution.statuses()[0].state is NodeState.RUNNING)
            execution.kill_node("train", 0)
        assert execution.wait(10).nodes[0].state is NodeState.KILLED
    assert labelled(cluster) == []



def test_stop_deletes_what_it_made_by_name_and_lists_nothing_while_its_pod_watch_works(spec, cluster, tmp_path):
    """Issue 24: at 1,000 nodes, listing every kind at each execution's end was most of node_level's requests.
    With a working pod watch, `stop` deletes the Job and the pods the watch shows by name and waits on the watch;
    the events are not watched at all when the pods came at once."""
    with executor(spec, cluster).start(training(), tmp_path / "run") as execution:
        pods = cluster.start_job_pods(NS, job_name(execution))
        for pod in pods:
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
        assert execution.wait(10).succeeded
        before = len(cluster.api.requests_seen)
    stop = [(verb, plural) for agent, verb, _, plural in cluster.api.requests_seen[before:]
            if agent != "fake-controller"]
    assert {verb for verb, _ in stop} == {"delete"}, stop  # nothing listed
    assert stop.count(("delete", "jobs")) == 1 and stop.count(("delete", "pods")) == len(pods), stop
    # what the run made beside its Job (its leader Service, the checkpoint claim, the network policy), by name
    assert {plural for _, plural in stop} == {"jobs", "pods", "services", "persistentvolumeclaims",
                                              "networkpolicies"}, stop
    assert not [r for r in cluster.api.requests_seen if r[3] == "events"]
    assert labelled(cluster) == []
