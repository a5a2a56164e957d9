"""`inference` on target kubernetes: the bundled server as a Deployment + Service, Locust in a Job beside it.

The load pod's records are real: the same workload the check hands the kubernetes executor runs first through the
local executor (the real server, the real load-pod driver, real Locust, the API key in a private secrets folder),
and its results volume becomes the log of the load pod that the stand-in kubelet plays on the fake API server
(tests/kube_fake.py). So the test covers the objects and their cleanup on the cluster side and every figure from
real requests on the other, without a cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from dcforge.checks.inference import InferenceConfig  # noqa: E402
from dcforge.steps.serving.load_pod import EXIT_NOT_READY, KILL_LINE  # noqa: E402
from dcforge.placement.serving import LOAD_ROLE, inference_workload  # noqa: E402
from dcforge.executors.local import LocalExecutor, free_port  # noqa: E402
from dcforge.executors.pod_results import result_lines  # noqa: E402
from dcforge.paths import REPO_ROOT  # noqa: E402
from dcforge.spec import load_environment  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402
from tests.unit.test_kubernetes_accept import NS, Kubelet, accept_only, labelled  # noqa: E402
from workloads.records import LoadPodResult, RequestRecord  # noqa: E402

SETTINGS = load_environment("cluster").spec.acceptance.settings["inference"]
"""The cluster environment's inference settings: the load pod's real run uses exactly these."""
SHORT = {"durationS: 10,": "durationS: 3,"}


@pytest.fixture(scope="module")
def load_pod_log(tmp_path_factory) -> str:
    """What the load pod's log ends with after a real run: its results volume, one `dcforge.result` line per file."""
    config = InferenceConfig.model_validate({**SETTINGS, "durationS": 3})
    workload = inference_workload(config, config.prompt_tokens, "a-test-key", 0, 60.0, 90.0)
    run_dir = tmp_path_factory.mktemp("load-pod")
    with LocalExecutor().start(workload, run_dir) as execution:
        outcome = execution.wait(150, roles=[LOAD_ROLE])
    load = [node for node in outcome.nodes if node.role == LOAD_ROLE][0]
    assert load.state.value == "succeeded", (run_dir / "load-0.log").read_text()[-2000:]
    return "\n".join(result_lines(run_dir / f"{LOAD_ROLE}-0" / "results")) + "\n"


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        yield fake


class ServingKubelet(Kubelet):
    """The Deployment and Job controllers and the kubelet: the server's pod Running and Ready, the load pod
    Succeeded with `load_log`, or `load_failure` (a status) when given. `created` keeps every object of the
    namespace it saw, by `Kind/name`."""

    def __init__(self, cluster: FakeCluster, load_log: str, load_failure: dict | None = None):
        super().__init__(cluster, play=None)  # this stand-in plays Deployments too: its own `_run`
        self.load_log, self.load_failure = load_log, load_failure
        self.created: dict[str, dict] = {}

    def _run(self) -> None:
        seen: set[str] = set()
        while not self._stop.wait(0.05):
            objects = self.cluster.objects(NS)
            for obj in objects:
                self.created.setdefault(f"{obj['kind']}/{obj['metadata']['name']}", obj)
            for obj in [o for o in objects if o["kind"] in ("Deployment", "Job")]:
                name = obj["metadata"]["name"]
                if name in seen:
                    continue
                seen.add(name)
                if obj["kind"] == "Deployment":
                    for pod in self.cluster.start_deployment_pods(NS, name):
                        self.cluster.bind_pod(NS, pod, "cpu-node-0")
                        self.cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.30",
                                                              "conditions": [{"type": "Ready", "status": "True"}]})
                    continue
                (pod,) = self.cluster.start_job_pods(NS, name)
                self.cluster.bind_pod(NS, pod, "cpu-node-0")
                self.cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.31"})
                if self.load_failure is not None:
                    self.cluster.set_pod_status(NS, pod, self.load_failure)
                    continue
                self.cluster.write_log(NS, pod, "Locust summary ...\n" + self.load_log)
                self.cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})


def test_inference_runs_its_server_and_locust_on_the_cluster(cluster, tmp_path, env_file, load_pod_log):
    """Deployment + Service of the server, a Job of the load pod reaching it through the Service's cluster IP, the
    API key a Secret; the figures come from the load pod's real requests and pass the environment's SLOs; nothing
    labelled is left."""
    with ServingKubelet(cluster, load_pod_log) as kubelet:
        outcome, _, entry = accept_only(cluster, tmp_path, env_file("cluster", replace=SHORT), "inference")
    created = kubelet.created
    assert entry is not None, outcome.output
    assert entry["status"] == "pass", (entry.get("reason"), outcome.output)
    metrics = entry["metrics"]
    assert metrics["request_throughput"]["value"] > 1 and metrics["error_rate"]["value"] == 0
    assert metrics["endpoint_compliance_failures"]["value"] == 0  # probed from inside: 401 without the key
    assert metrics["replica_share_min_to_fair"]["value"] >= 0.5  # both replicas of the one server pod served
    assert metrics["replicas_ready_s"]["value"] > 0 and metrics["decode_batch_mean"]["value"] >= 1
    assert "energy_j" not in metrics and "output_tokens_per_joule" not in metrics  # a restricted pod reads no power
    assert {pod["role"]: pod["kubernetes_node"] for pod in entry["details"]["pods"]} == {
        "server": "cpu-node-0", "load": "cpu-node-0"}
    kinds = sorted(key.split("/")[0] for key in created if not key.startswith("Pod/"))  # pods: the kubelet's
    assert kinds == ["Deployment", "Job", "NetworkPolicy", "Secret", "Service"]
    (deployment,) = [o for k, o in created.items() if k.startswith("Deployment/")]
    (job,) = [o for k, o in created.items() if k.startswith("Job/")]
    (service,) = [o for k, o in created.items() if k.startswith("Service/")]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--replicas 2 " in server["command"][2] and "--device cpu " in server["command"][2]
    assert f"http://{service['spec']['clusterIP']}:29400" in job["spec"]["template"]["spec"]["containers"][0][
        "command"][2]
    assert "a-test-key" not in json.dumps([o for k, o in created.items() if not k.startswith("Secret/")])
    assert labelled(cluster) == []


def test_a_load_pod_that_failed_fails_the_check_naming_it(cluster, tmp_path, env_file):
    """The load pod exits 3 (the server never got ready): the check fails with the pod and its exit, and the run
    leaves nothing behind."""
    failed = {"phase": "Failed", "containerStatuses": [{
        "name": "node", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
        "state": {"terminated": {"exitCode": EXIT_NOT_READY, "reason": "Error"}}}]}
    with ServingKubelet(cluster, "", load_failure=failed):
        outcome, _, entry = accept_only(cluster, tmp_path, env_file("cluster", replace=SHORT), "inference")
    assert entry is not None, outcome.output
    assert entry["status"] == "fail" and "load/0 on dcf-inference-" in entry["reason"]
    assert f"(exit {EXIT_NOT_READY})" in entry["reason"]
    assert labelled(cluster) == []


@pytest.mark.parametrize("setting, key", [("tls: true", "tls"), ("modelSource: trained", "modelSource")])
def test_a_setting_the_cluster_cannot_honour_is_one_line_naming_it(cluster, tmp_path, env_file, setting, key):
    """The check is an error whose one line names the key and says why, before anything is created."""
    env = env_file("cluster", replace={"inference: {replicas: 2,": f"inference: {{{setting}, replicas: 2,"})
    outcome, _, entry = accept_only(cluster, tmp_path, env, "inference")
    assert entry is not None and entry["status"] == "error", outcome.output
    assert f"dcforge:acceptance.settings.inference.{key}: not available on target kubernetes" in entry["reason"]
    assert "\n" not in entry["reason"] and "Traceback" not in outcome.output
    assert not [o for o in cluster.objects(NS)]


def test_the_load_pod_says_in_one_line_when_the_server_never_gets_ready(tmp_path):
    """Nothing listens at the URL: exit 3 within the readiness limit, one line naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dcforge.steps.serving.load_pod", "--url", url, "--replicas", "2",
                           "--ready-timeout", "1", "--logs", str(tmp_path / "logs"), "--results",
                           str(tmp_path / "results"), "--timeout", "5", "--", sys.executable, "-c", "pass"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_NOT_READY and time.monotonic() - started < 30
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: the server at {url}: 0/2 replicas ready after 1 s")


def request(start: float, replica: str, ok: bool = True, failed_at: float | None = None) -> str:
    """One request-log line: 50 ms, 8 tokens, from `replica`; a failed one has no answer (connection reset at
    `failed_at`, 10 ms after its start unless given)."""
    if not ok:
        end = start + 0.01 if failed_at is None else failed_at
        return RequestRecord(start=start, end=end, ok=False, error="connection reset").to_json()
    return RequestRecord(start=start, end=start + 0.05, ok=True, status=200, ttft_s=0.01, e2e_s=0.05,
                         token_times_s=[0.01 + 0.005 * i for i in range(8)], output_tokens=8, prompt_tokens=32,
                         replica=replica).to_json()


def failover_log(folder: Path, t_kill: float, deleted_by: float, victim: str, survivor: str, new: str) -> str:
    """The load pod's results after a failover: 10 s of requests alternating over two pods before the kill, one
    in flight on the victim from just before the kill was asked (`t_kill`) until the pod was gone (`deleted_by`,
    when the fake saw it deleted), then the survivor alone and, from 2 s on, the new pod too.

    The check dates the kill `t_kill` plus its own reaction (it cannot know the load pod's clock otherwise), which
    lies inside that span however busy the machine is: the request is in flight at the check's kill time by
    construction, not by a race."""
    lines, t = [], t_kill - 10.0
    while t < t_kill + 10.0:
        if t < t_kill:
            lines.append(request(t, victim if round((t - t_kill) * 10) % 2 else survivor))
        else:
            lines.append(request(t, new if t > t_kill + 2.0 and round(t * 10) % 2 else survivor))
        t += 0.1
    lines.append(request(t_kill - 0.005, victim, ok=False, failed_at=deleted_by + 0.005))
    folder.mkdir(parents=True)
    (folder / "requests.jsonl").write_text("\n".join(lines) + "\n")
    window = {"start": t_kill - 10.0, "stop": t_kill + 10.0, "grace_s": 2.0, "sent": len(lines), "abandoned": 0}
    (folder / "load.json").write_text(LoadPodResult(
        ready_s=1.0, replicas_ready=2, endpoint_findings=[], locust_exit=0, windows=[window],
        locust_started=t_kill - 12.0).to_json() + "\n")
    return "\n".join(result_lines(folder)) + "\n"


class FailoverKubelet(ServingKubelet):
    """Two server pods Ready; the load pod asks for the kill, and once the check has deleted a server pod the
    Deployment's replacement comes up Ready and the load pod ends with a request log that saw it all."""

    def __init__(self, cluster: FakeCluster, folder: Path):
        super().__init__(cluster, "")
        self.folder = folder

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            deployments = [o for o in self.cluster.objects(NS) if o["kind"] == "Deployment"]
            jobs = [o for o in self.cluster.objects(NS) if o["kind"] == "Job"]
            if deployments and jobs:
                break
        deployment, job = deployments[0]["metadata"]["name"], jobs[0]["metadata"]["name"]
        ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        servers = self.cluster.start_deployment_pods(NS, deployment)
        addresses = {pod: f"10.244.0.{41 + n}" for n, pod in enumerate(servers)}
        for pod, address in addresses.items():
            self.cluster.set_pod_status(NS, pod, {**ready, "podIP": address})
        (load,) = self.cluster.start_job_pods(NS, job)
        self.cluster.set_pod_status(NS, load, {"phase": "Running", "podIP": "10.244.0.50"})
        t_kill = time.time()
        self.cluster.write_log(NS, load, f"2 replicas ready\n{KILL_LINE} {t_kill:.6f}\n")
        while not self._stop.wait(0.05):
            live = {o["metadata"]["name"] for o in self.cluster.objects(NS) if o["kind"] == "Pod"}
            if set(servers) - live:
                break
        deleted_by = time.time()
        (victim,) = set(servers) - live
        (survivor,) = set(servers) - {victim}
        (new,) = self.cluster.start_deployment_pods(NS, deployment, count=1)
        self.cluster.set_pod_status(NS, new, {**ready, "podIP": "10.244.0.43"})
        self.victim = victim
        log = failover_log(self.folder, t_kill, deleted_by, f"{addresses[victim]}/7", f"{addresses[survivor]}/7",
                           "10.244.0.43/7")
        self.cluster.write_log(NS, load, f"{KILL_LINE} {t_kill:.6f}\n" + log)
        self.cluster.set_pod_status(NS, load, {"phase": "Succeeded"})


def test_failover_deletes_a_server_pod_and_measures_the_recovery_from_the_load_pods_log(cluster, tmp_path,
                                                                                        env_file):
    """A pod per replica behind the Service; the check deletes the first when the load pod asks, the Deployment's
    replacement serves; TTR, the victim's share and the lost request come from the load pod's request log."""
    with FailoverKubelet(cluster, tmp_path / "pod-results") as kubelet:
        outcome, _, entry = accept_only(cluster, tmp_path, env_file("cluster"), "inference_failover")
    assert entry["status"] == "pass", (entry.get("reason"), outcome.output)
    details, metrics = entry["details"], entry["metrics"]
    assert details["victim_pod"] == kubelet.victim and details["respawned"] == "10.244.0.43/7"
    assert metrics["victim_share"]["value"] == pytest.approx(0.5, abs=0.05)
    assert metrics["respawned_replica_requests"]["value"] > 0
    assert metrics["killed_replica_in_flight"]["value"] == 1 and metrics["excess_failures"]["value"] == 0
    assert metrics["ttr_s"]["value"] < 2
    assert metrics["replica_respawn_s"]["value"] < 5
    assert abs(details["kill_at_s"] - 12.0) < 1.0  # the load pod's clock: asked at Locust start + 12 s
    assert labelled(cluster) == []
