"""The single-node checks (`system`, `train`, `allreduce`, `checkpoint`) on target kubernetes: each runs its
workload as one pod on a machine of the acceptance pool and judges the typed record the pod logs, with the check's
own formulas. Against the fake API server (tests/kube_fake.py), with the stand-in kubelet of
test_kubernetes_accept.py playing each pod: it answers with the record the real workload would write."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from typer.testing import CliRunner  # noqa: E402

from dcforge.checks.gpu_bandwidth import GPU_BANDWIDTH_FILE  # noqa: E402
from dcforge.cli import app  # noqa: E402
from dcforge.executors.pod_results import result_lines  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402
from tests.unit.test_kubernetes_accept import (NS, POOL, POOL_LABELS, Kubelet, accept_only,  # noqa: E402
                                               kubeconfig_for, labelled, sweep_line)
from workloads.records import (ALLREDUCE_RESULT_FILE, CHECKPOINT_RESULT_FILE, SYSTEM_FACTS_FILE,  # noqa: E402
                               TRAIN_METRICS_FILE, CheckpointResult, SystemFacts, TrainStep)

CHECKS = "system,gpu_bandwidth,train,allreduce,checkpoint"


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        yield fake
TRAIN = {"train: {preset: tiny, seqLen: 128, globalBatchSize: 8, steps: 10}":
         "train: {preset: tiny, seqLen: 64, globalBatchSize: 8, steps: 4, warmupStepsExcluded: 1}"}
"""The four steps the stand-in pod logs."""


def records(folder: Path, name: str, lines: list[str]) -> str:
    """What the pod's log ends with: its results folder, one `dcforge.result` line per file."""
    folder.mkdir(parents=True)
    (folder / name).write_text("".join(line + "\n" for line in lines))
    return "\n".join(result_lines(folder)) + "\n"


def workload_logs(folder: Path, gpus: int) -> dict[str, str]:
    """The record each workload writes, by the command that writes it."""
    facts = SystemFacts(hostname="dcf-pod", cpu_count=64, memory_gi=500.0, cpu_model="x", kernel="6.1", os="linux",
                        python="3.11", versions={}, gpus=[])  # the pod sees no GPU: the system verdict says so
    steps = [TrainStep(step=i, attempt=0, loss=5.5 - 0.5 * i, step_time_s=0.1, tokens_per_s=1000.0 + i,
                       tokens_per_s_total=gpus * 1000.0, mfu=None, lr=1e-3) for i in range(1, 5)]
    checkpoint = CheckpointResult(
        preset="tiny", with_optimizer=True, world_size=gpus, bytes=2_000_000, tensor_bytes_per_replica=1_000_000,
        tensors=10, rounds=1, save_s=0.01, load_s=0.005, raw_write_s=0.008, verify_s=0.001, save_times_s=[0.01],
        raw_write_times_s=[0.008], save_gbps=0.2, load_gbps=0.4, raw_write_gbps=0.25, save_ratio_to_raw=0.8,
        checksum_match=True, corruption_detected=True, directory="/dcforge/checkpoints/checkpoint")
    bandwidth = {"bytes": 1 << 28, "iters": 20, "gemm_size": 8192, "gemm_iters": 50, "torch": "2.x", "cuda": "12.8",
                 "host_device": [{"gpu": i, "h2d_gbps": 50.0 + i, "d2h_gbps": 48.0} for i in range(gpus)],
                 "device_device": [{"source": a, "destination": b, "gbps": 700.0, "peer_access": True}
                                   for a in range(gpus) for b in range(gpus) if a != b],
                 "gemm": [{"gpu": i, "name": "NVIDIA H100 80GB HBM3", "tflops": 700.0} for i in range(gpus)]}
    return {"workloads/gpu_bandwidth.py": records(folder / "bandwidth", GPU_BANDWIDTH_FILE, [json.dumps(bandwidth)]),
            "dcforge.steps.system": records(folder / "system", SYSTEM_FACTS_FILE, [facts.to_json()]),
            "train.py": records(folder / "train", TRAIN_METRICS_FILE, [step.to_json() for step in steps]),
            "allreduce.py": records(folder / "allreduce", ALLREDUCE_RESULT_FILE, [sweep_line().strip()]),
            "train_checkpoint_bench.py": records(folder / "checkpoint", CHECKPOINT_RESULT_FILE,
                                                 [checkpoint.to_json()])}


def test_single_node_checks_run_as_one_pod_on_a_machine_of_the_pool(cluster, tmp_path, env_file):
    """Each check is one pod on the pool asking for a whole machine (its 4 GPUs, a rank on each); the checkpoint
    pod mounts a claim of the checkpoints StorageClass; figures and verdicts come from the pod's record; the
    report names the node; nothing labelled is left. This machine has no GPU, yet train, allreduce and
    checkpoint are not skipped: the GPUs they need are the pool's."""
    cluster.add_node("gpu-node-a", POOL_LABELS)
    logs = workload_logs(tmp_path / "logs", gpus=4)
    pods: dict[str, dict] = {}

    def play(started: list[str]) -> None:
        (pod,) = started
        spec = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)["spec"]
        script = " ".join(spec["containers"][0]["command"] + spec["containers"][0].get("args", []))
        (workload,) = [name for name in logs if name in script]
        pods[workload] = spec
        cluster.bind_pod(NS, pod, "gpu-node-a")
        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.60"})
        cluster.write_log(NS, pod, logs[workload])
        cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})

    env = env_file("cluster", replace={
        "dcforge:gpuPools: []": POOL.replace("gpusPerNode: 1", "gpusPerNode: 4"),
        "checks: [system,": "checks: [system, gpu_bandwidth,", **TRAIN})
    with Kubelet(cluster, play):
        outcome = CliRunner().invoke(app, ["accept", "--env-file", str(env), "--only", CHECKS, "--kubeconfig",
                                           str(kubeconfig_for(cluster.url, tmp_path)),
                                           "--reports", str(tmp_path / "reports")])
    (report_dir,) = (tmp_path / "reports" / "cluster").iterdir()
    checks = {c["name"]: c for c in json.loads((report_dir / "report.json").read_text())["checks"]}
    assert [checks[name]["status"] for name in ("gpu_bandwidth", "train", "allreduce", "checkpoint")] == [
        "pass"] * 4, outcome.output
    assert checks["gpu_bandwidth"]["metrics"]["h2d_gbps"]["value"] == 50.0  # the slowest of the pod's 4 GPUs
    assert checks["gpu_bandwidth"]["metrics"]["gemm_fraction_of_peak"]["value"] > 0.7
    assert checks["system"]["status"] == "fail" and "gpu" in checks["system"]["reason"].lower()
    assert (checks["system"]["details"]["hostname"], checks["system"]["details"]["expected_gpus"]) == ("dcf-pod", 4)
    assert checks["train"]["metrics"]["loss_end"]["value"] == 3.5  # from the pod's records
    assert checks["allreduce"]["metrics"]["busbw_gbps"]["value"] == 0.5
    (run,) = checks["allreduce"]["details"]["nccl_transport"]["runs"]  # from the pod's log; gloo: rule skipped
    assert run["network"] == "TCP" and run["rule"]["verdict"] == "skipped" and run["host"].startswith("dcf-")
    assert checks["checkpoint"]["metrics"]["save_gbps"]["value"] == 0.2
    for name in ("system", "gpu_bandwidth", "train", "allreduce", "checkpoint"):
        assert checks[name]["details"]["kubernetes_node"] == "gpu-node-a"
        assert checks[name]["details"]["executor"] == "kubernetes"
        assert 0 < checks[name]["details"]["api_requests"] < 40  # a watch, not polling
        assert 0 < checks[name]["details"]["pods_started_s"] < 30 and 0 <= checks[name]["details"]["cleanup_s"] < 30
    for workload in ("workloads/gpu_bandwidth.py", "train.py", "allreduce.py", "train_checkpoint_bench.py"):
        (container,) = pods[workload]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert workload == "workloads/gpu_bandwidth.py" or "--nproc-per-node=4" in " ".join(
            container["command"] + container.get("args", []))
    claims = [v for v in pods["train_checkpoint_bench.py"]["volumes"] if "persistentVolumeClaim" in v]
    assert len(claims) == 1 and not [v for v in pods["train.py"]["volumes"] if "persistentVolumeClaim" in v]
    assert labelled(cluster) == []


def test_a_pool_check_whose_pod_cannot_start_is_an_error_naming_the_pod(cluster, tmp_path, env_file):
    """The image cannot be pulled: the live view shows why the pod waits, and the check is an error whose one
    line names the pod and the reason, long before the check's time limit."""
    waiting = {"name": "train", "ready": False, "restartCount": 0, "image": "x", "imageID": ""}

    def play(started: list[str]) -> None:
        (pod,) = started
        for reason in ("ErrImagePull", "ImagePullBackOff"):  # the first may pass; the back-off is final
            cluster.set_pod_status(NS, pod, {"phase": "Pending", "containerStatuses": [
                {**waiting, "state": {"waiting": {"reason": reason, "message": "manifest unknown"}}}]})
            time.sleep(0.5)

    env = env_file("cluster", replace={"dcforge:gpuPools: []": POOL, **TRAIN})
    started = time.monotonic()
    with Kubelet(cluster, play):
        outcome, _, check = accept_only(cluster, tmp_path, env, "train")
    assert time.monotonic() - started < 30
    assert "(ErrImagePull: manifest unknown)" in outcome.output  # the live view, while the pod waits
    assert check["status"] == "error" and "\n" not in check["reason"]
    assert check["reason"] == f"train: pod {check['details']['pod']}: ImagePullBackOff: manifest unknown"
    assert labelled(cluster) == []


def test_a_checkpoint_directory_on_target_kubernetes_is_one_line_naming_the_key(cluster, tmp_path, env_file):
    env = env_file("cluster", replace={
        "dcforge:gpuPools: []": POOL, "checkpoint: {preset: tiny, rounds: 2}": "checkpoint: {directory: /mnt/ckpt}"})
    _, _, check = accept_only(cluster, tmp_path, env, "checkpoint")
    assert check["status"] == "error"
    assert "dcforge:acceptance.settings.checkpoint.directory" in check["reason"]
    assert "checkpoints StorageClass" in check["reason"]


def test_a_pool_check_ended_by_its_time_limit_leaves_no_labelled_object(cluster, tmp_path, env_file):
    """A pod that runs past the check's time is killed (a fail, as for the multi-node checks) and deleted."""
    running: list[str] = []

    def play(started: list[str]) -> None:  # the pod runs on and on
        for pod in started:
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.61"})
        running.extend(started)

    env = env_file("cluster", replace={
        "dcforge:gpuPools: []": POOL, "train: 300, allreduce: 300,": "train: 300, allreduce: 3,"})
    started = time.monotonic()
    with Kubelet(cluster, play):
        outcome, _, check = accept_only(cluster, tmp_path, env, "allreduce")
    assert time.monotonic() - started < 40 and outcome.exit_code == 1, outcome.output
    assert running and labelled(cluster) == []
    assert check["status"] == "fail" and check["reason"].endswith(" killed: timed out"), check["reason"]


def test_gpu_bandwidth_on_a_pool_without_gpus_is_skipped_with_its_reason(cluster, tmp_path, env_file):
    env = env_file("cluster", replace={"checks: [system,": "checks: [system, gpu_bandwidth,"})
    _, _, check = accept_only(cluster, tmp_path, env, "gpu_bandwidth")
    assert (check["status"], check["reason"]) == (
        "skipped", "the acceptance pool's machines have no GPUs: no GPU bandwidth to measure")
    assert labelled(cluster) == []


def failover_records(sha: str) -> tuple[list[str], list[str]]:
    """What train.py writes: the faulted run as both pods appended it on the claim (the first held after step 6
    and was deleted; the Job's new pod resumed from the step-4 checkpoint) and the uninterrupted run."""
    from workloads.records import TrainCheckpointSaved, TrainFinal, TrainStart

    def step(number: int, at: float) -> TrainStep:
        return TrainStep(step=number, attempt=0, loss=5.0, step_time_s=0.1, tokens_per_s=100.0,
                         tokens_per_s_total=200.0, mfu=None, lr=1e-3, time=at)

    faulted = [TrainStart(attempt=0, resumed_from_step=None, world_size=2, device="cpu", preset="tiny", time=0.0),
               *[step(n, n) for n in range(1, 7)],
               TrainCheckpointSaved(step=4, bytes=1000, save_s=0.01, time=4.1),
               TrainStart(attempt=0, resumed_from_step=4, world_size=2, device="cpu", preset="tiny", time=9.0),
               *[step(n, 5 + n) for n in range(5, 13)],
               TrainFinal(step=12, attempt=0, params_sha256=sha, time=18.0)]
    reference = [*[step(n, n) for n in range(1, 13)], TrainFinal(step=12, attempt=0, params_sha256=sha, time=12.5)]
    return [r.to_json() for r in faulted], [r.to_json() for r in reference]


@pytest.mark.parametrize("reference_sha, verdict", [("a" * 64, "pass"), ("b" * 64, "fail")])
def test_train_failover_deletes_the_training_pod_and_the_jobs_new_pod_resumes(cluster, tmp_path, env_file,
                                                                              reference_sha, verdict):
    """On a pool without GPUs: the training pod (checkpoints on a claim) holds after step 6 and is deleted; the
    Job's new pod resumes from the claim and finishes; the recovery rules judge both pods' records; then an
    uninterrupted pod's final parameters must equal the faulted run's, bit for bit."""
    from workloads.records import HOLD_LINE

    faulted, _ = failover_records("a" * 64)
    _, reference = failover_records(reference_sha)
    results = records(tmp_path / "faulted", "faulted.jsonl", faulted)
    pods: dict[str, dict] = {}

    def play(started: list[str]) -> None:
        (pod,) = started
        job = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)["metadata"]["labels"]["job-name"]
        spec = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)["spec"]
        command = " ".join(spec["containers"][0]["command"])
        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.62"})
        if "--hold-at-step 6" not in command:
            pods["reference"] = spec
            cluster.write_log(NS, pod, records(tmp_path / "reference", "reference.jsonl", reference))
            cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
            return
        pods["faulted"] = spec
        cluster.write_log(NS, pod, f"step     6  loss 5.0\n{HOLD_LINE} 6\n")
        until(lambda: pod not in {o["metadata"]["name"] for o in cluster.objects(NS)})  # the check deleted it
        (replacement,) = cluster.start_job_pods(NS, job)
        pods["replacement"] = {"name": replacement}
        cluster.set_pod_status(NS, replacement, {"phase": "Running", "podIP": "10.244.0.64"})
        cluster.write_log(NS, replacement, results)
        cluster.set_pod_status(NS, replacement, {"phase": "Succeeded"})

    env = env_file("cluster")
    with Kubelet(cluster, play):
        _, _, check = accept_only(cluster, tmp_path, env, "train_failover")
    assert check["status"] == verdict, check["reason"]
    metrics = {name: m["value"] for name, m in check["metrics"].items()}
    assert (metrics["failure_step"], metrics["resumed_step"], metrics["steps_lost"]) == (7, 4, 3)
    assert 3.0 <= metrics["time_to_resume_s"] <= 4.0  # the new pod's first step - (the hold + the deletion delay)
    assert metrics["restarts"] == 1 and metrics["final_params_match"] == (verdict == "pass")
    assert check["details"]["pod"] == pods["replacement"]["name"] != check["details"]["deleted_pod"]
    command = " ".join(pods["faulted"]["containers"][0]["command"])
    assert "dcforge.executors.collect" in command and "--fail-at-step" not in command
    assert [v for v in pods["faulted"]["volumes"] if "persistentVolumeClaim" in v]
    assert not [v for v in pods["reference"]["volumes"] if "persistentVolumeClaim" in v]
    assert labelled(cluster) == []


def until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_ctrl_c_during_a_pool_check_exits_130_keeps_the_report_and_leaves_no_labelled_object(cluster, tmp_path,
                                                                                            env_file):
    running: list[str] = []

    def play(started: list[str]) -> None:  # the pod runs until Ctrl-C half a second later
        for pod in started:
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.63"})
        running.extend(started)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

    env = env_file("cluster", replace={"dcforge:gpuPools: []": POOL})
    started = time.monotonic()
    with Kubelet(cluster, play):
        outcome, _, check = accept_only(cluster, tmp_path, env, "train")
    assert time.monotonic() - started < 40 and outcome.exit_code == 130, outcome.output
    assert running and labelled(cluster) == []
    assert check["status"] == "error" and "interrupted by SIGINT" in check["reason"], check["reason"]


def test_train_failover_multinode_deletes_a_nodes_pod_and_the_others_go_on(cluster, tmp_path, env_file):
    """Target kubernetes: the elastic Indexed Job (each index may fail once, one may be lost) holds after step 6;
    the check deletes the last node's pod; the survivor resumes from the step-4 checkpoint with the nodes left and
    hands back the records every node appended on the claim."""
    import re

    from workloads.records import HOLD_LINE, TrainCheckpointSaved, TrainFinal, TrainStart

    seen: dict[str, object] = {}

    def play(started: list[str]) -> None:
        job = next(o for o in cluster.objects(NS) if o["kind"] == "Job")
        seen["job"] = job
        command = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
        nproc = int(re.search(r"--nproc-per-node=(\d+)", command).group(1))
        for index, pod in enumerate(started):
            cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": f"10.244.0.{80 + index}"})
        cluster.write_log(NS, started[0], f"step     6  loss 5.0\n{HOLD_LINE} 6\n")
        until(lambda: started[1] not in {o["metadata"]["name"] for o in cluster.objects(NS)})

        def step(number: int, attempt: int) -> TrainStep:
            return TrainStep(step=number, attempt=attempt, loss=5.0, step_time_s=0.1, tokens_per_s=100.0,
                             tokens_per_s_total=200.0, mfu=None, lr=1e-3, time=float(number + 10 * attempt))
        appended = [TrainStart(attempt=0, resumed_from_step=None, world_size=2 * nproc, device="cpu",
                               preset="tiny", time=0.0), *[step(n, 0) for n in range(1, 7)],
                    TrainCheckpointSaved(step=4, bytes=1000, save_s=0.01, time=4.1),
                    TrainStart(attempt=1, resumed_from_step=4, world_size=nproc, device="cpu", preset="tiny",
                               time=12.0), *[step(n, 1) for n in range(5, 13)],
                    TrainFinal(step=12, attempt=1, params_sha256=None, time=23.0)]
        cluster.write_log(NS, started[0], records(tmp_path / "node0", "metrics.jsonl",
                                                  [r.to_json() for r in appended]))
        cluster.set_pod_status(NS, started[0], {"phase": "Succeeded"})

    with Kubelet(cluster, play):
        _, _, check = accept_only(cluster, tmp_path, env_file("cluster"), "train_failover_multinode")
    assert check["status"] == "pass", check["reason"]
    metrics = {name: m["value"] for name, m in check["metrics"].items()}
    assert (metrics["failure_step"], metrics["resumed_step"], metrics["steps_lost"]) == (7, 4, 3)
    assert metrics["nodes_after"] == 1
    spec = seen["job"]["spec"]
    assert (spec.get("backoffLimit"), spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (None, 0, 1)
    command = spec["template"]["spec"]["containers"][0]["command"][2]
    assert "dcforge.executors.collect" in command and "--hold-at-step 6" in command
    assert check["details"]["nodes"][1]["state"] == "isolated"
    assert labelled(cluster) == []


def test_gpu_health_reads_every_pool_node_in_a_pinned_pod_and_names_the_bad_one(cluster, tmp_path, env_file):
    """A pod pinned to each Ready pool node, holding its 4 GPUs, hands back that node's readings; each is judged by
    the local verdict: a fatal XID on gpu-node-b and only 3 GPUs visible on gpu-node-c fail those nodes, by name,
    and the row names the Kubernetes node that `--taint-failed` would quarantine."""
    import dataclasses

    from dcforge.gpu.readings import NodeHealth, XidEvent
    from tests.unit.test_gpu_health import BUS_IDS, healthy_gpu
    from workloads.records import GPU_HEALTH_FILE, GpuHealthResult

    for name in ("gpu-node-a", "gpu-node-b", "gpu-node-c"):
        cluster.add_node(name, POOL_LABELS)
    healthy = NodeHealth(gpus=tuple(healthy_gpu(i) for i in range(4)), notes=("kernel log not readable",))
    readings = {"gpu-node-a": healthy,
                "gpu-node-b": dataclasses.replace(healthy, xids=(XidEvent(79, BUS_IDS[2], "fell off the bus",
                                                                          "nvml"),)),
                "gpu-node-c": dataclasses.replace(healthy, gpus=healthy.gpus[:3])}
    specs: dict[str, dict] = {}

    def play(started: list[str]) -> None:
        (pod,) = started
        node = cluster.pinned_node(NS, pod)
        specs[node] = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)["spec"]
        cluster.bind_pod(NS, pod, node)
        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.90"})
        record = GpuHealthResult(hostname=pod, dcgm_level=1, health=dataclasses.asdict(readings[node]))
        cluster.write_log(NS, pod, records(tmp_path / node, GPU_HEALTH_FILE, [record.to_json()]))
        cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})

    env = env_file("cluster", replace={"dcforge:gpuPools: []": POOL.replace("gpusPerNode: 1", "gpusPerNode: 4"),
                                       "checks: [system,": "checks: [gpu_health, system,"})
    with Kubelet(cluster, play):
        _, _, check = accept_only(cluster, tmp_path, env, "gpu_health")
    assert check["status"] == "fail", check["reason"]
    assert "gpu-node-b" in check["reason"] and "gpu-node-c" in check["reason"] and "gpu-node-a" not in check["reason"]
    assert "per node and 3 are visible in the pod on" in check["reason"] and "79" in check["reason"]
    assert "recommended action: reboot node" in check["reason"]
    rows = {row["host"]: row for row in check["details"]["nodes"]}
    assert rows["gpu-node-a"]["state"] == "succeeded" and rows["gpu-node-b"]["state"] == "failed"
    assert rows["gpu-node-b"]["kubernetes_node"] == "gpu-node-b"
    assert check["metrics"]["gpus_checked"]["value"] == 11 and check["metrics"]["fatal_xids"]["value"] == 1
    assert all(spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4 for spec in specs.values())
    assert set(specs) == {"gpu-node-a", "gpu-node-b", "gpu-node-c"}
    assert labelled(cluster) == []


def test_gpu_health_on_a_pool_without_gpus_is_skipped_with_its_reason(cluster, tmp_path, env_file):
    env = env_file("cluster", replace={"checks: [system,": "checks: [gpu_health, system,"})
    _, _, check = accept_only(cluster, tmp_path, env, "gpu_health")
    assert check["status"] == "skipped" and "no GPUs" in check["reason"]
    assert not cluster.objects(NS)
