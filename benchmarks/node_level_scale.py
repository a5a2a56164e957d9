"""`python -m benchmarks.node_level_scale [NODES ...]`: node_level on N Ready nodes of a fake API (kmock).

The orchestration's cost as the pool grows (issue 24): `dcforge accept --only node_level` (the all-reduce step,
target kubernetes) on a pool of N Ready nodes of the fake API server of the unit tests (tests/kube_fake.py), which
runs in a process of its own with a stand-in Job controller, scheduler and kubelet (a watch on Jobs: each Job's
pod is created, bound to the node its affinity names, Running, its log written, Succeeded, all through the API).
Measured in dcforge's process: wall time of the check, CPU time of the process (dcforge's own work; the fake's is
in the other process), and every request the fake saw from dcforge, per node and by verb and resource.
Default sizes 100, 300, 1000. Prints one table; figures go to benchmarks/README.md.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

NS = "acceptance"
POOL = "gpu-a"
CONTROLLER_AGENT = "fake-controller"


def _serve(nodes: int) -> None:
    """The fake cluster's process: the API server, N Ready pool nodes, the stand-in controllers. Prints its URL,
    then answers each line on stdin with the request counts of agents other than its own, as JSON."""
    from kubernetes import client, watch

    from dcforge.executors.pod_results import result_lines
    from dcforge.manifests.common import POOL_LABEL
    from tests.kube_fake import FakeCluster
    from workloads.records import ALLREDUCE_RESULT_FILE, AllreduceResult, AllreduceRow

    row = AllreduceRow(bytes=1 << 20, elements=1 << 18, time_s=0.002, algbw_gbps=0.5, busbw_gbps=1.0, correct=True)
    sweep = AllreduceResult(environment={"backend": "gloo", "world_size": 1}, dtype="float32", warmup=5,
                            iterations=20, formulas=[], results=[row]).to_json() + "\n"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / ALLREDUCE_RESULT_FILE).write_text(sweep)
        log = "\n".join(result_lines(Path(folder))) + "\n"
    with FakeCluster() as cluster:
        for index in range(nodes):
            cluster.add_node(f"node-{index:05d}", {POOL_LABEL: POOL})

        def controllers() -> None:
            jobs = client.BatchV1Api(cluster.api_client(CONTROLLER_AGENT))
            for event in watch.Watch().stream(jobs.list_namespaced_job, NS, timeout_seconds=3600):
                if event["type"] != "ADDED":
                    continue
                try:
                    for pod in cluster.start_job_pods(NS, event["object"].metadata.name):
                        cluster.bind_pod(NS, pod, cluster.pinned_node(NS, pod))
                        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.50"})
                        cluster.write_log(NS, pod, log)
                        cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})
                except client.ApiException as error:  # dcforge deleted the Job or pod meanwhile: its check says why
                    print(f"stand-in controller: {error.status} {error.reason}", file=sys.stderr)

        threading.Thread(target=controllers, daemon=True).start()
        print(cluster.url, flush=True)
        for _ in sys.stdin:
            seen = [r for r in list(cluster.api.requests_seen) if not r[0].startswith("fake-")]
            print(json.dumps(Counter(f"{verb} {plural}" for _, verb, _, plural in seen)), flush=True)


def _environment(folder: Path, nodes: int) -> Path:
    from dcforge.paths import REPO_ROOT

    text = (REPO_ROOT / "stacks" / "Pulumi.cluster.yaml").read_text()
    replacements = {
        "dcforge:gpuPools: []": ("dcforge:gpuPools:\n"
                                 f"    - {{name: {POOL}, gpuModel: H100-SXM, gpusPerNode: 1, nodeCount: {nodes}}}"),
        "checks: [system,": "checks: [node_level, system,",
        "      slow_node: {nodes: 2}": "      slow_node: {nodes: 2}\n      node_level: {workloads: [allreduce]}",
        "timeoutsS: {system: 120,": "timeoutsS: {node_level: 1800, system: 120,"}
    for old, new in replacements.items():
        assert old in text, f"stacks/Pulumi.cluster.yaml changed: {old!r} not found"
        text = text.replace(old, new)
    path = folder / "Pulumi.cluster.yaml"
    path.write_text(text)
    return path


def measure(nodes: int) -> dict:
    from typer.testing import CliRunner

    from dcforge.cli import app

    fake = subprocess.Popen([sys.executable, "-m", "benchmarks.node_level_scale", "--serve", str(nodes)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = fake.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            kubeconfig = folder / "kubeconfig"
            kubeconfig.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
            env = _environment(folder, nodes)
            cpu_before, wall_before = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            outcome = CliRunner().invoke(app, ["accept", "--env-file", str(env), "--only", "node_level",
                                               "--kubeconfig", str(kubeconfig), "--reports", str(folder / "r")])
            wall = time.monotonic() - wall_before
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            (report_dir,) = (folder / "r" / "cluster").iterdir()
            report = json.loads((report_dir / "report.json").read_text())
        (check,) = [c for c in report["checks"] if c["name"] == "node_level"]
        if outcome.exit_code != 0 or check["status"] != "pass" or len(check["details"]["nodes"]) != nodes:
            raise SystemExit(f"node_level on {nodes} nodes did not pass: exit {outcome.exit_code}, "
                             f"{check['status']}: {check.get('reason')}\n{outcome.output[-2000:]}")
        fake.stdin.write("counts\n")
        fake.stdin.flush()
        requests = Counter(json.loads(fake.stdout.readline()))
    finally:
        fake.kill()
        fake.wait()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"nodes": nodes, "check_s": check["duration_s"], "wall_s": wall, "cpu_s": cpu,
            "requests": sum(requests.values()), "by_kind": requests}


def main(sizes: list[int]) -> None:
    print("| nodes | accept wall s | check s | dcforge CPU s | API requests | requests / node |", flush=True)
    print("| ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    rows = []
    for n in sizes:
        rows.append(r := measure(n))
        print(f"| {r['nodes']} | {r['wall_s']:.1f} | {r['check_s']:.1f} | {r['cpu_s']:.1f} | {r['requests']} | "
              f"{r['requests'] / r['nodes']:.2f} |", flush=True)
    last = rows[-1]
    print(f"requests at {last['nodes']} nodes by verb and resource:",
          ", ".join(f"{k} {v}" for k, v in sorted(last["by_kind"].items(), key=lambda kv: -kv[1])))
    if len(rows) > 1:
        first = rows[0]
        scale = last["nodes"] / first["nodes"]
        print(f"growth {first['nodes']} -> {last['nodes']} nodes (x{scale:g}): wall x{last['wall_s'] / first['wall_s']:.2f}, "
              f"CPU x{last['cpu_s'] / first['cpu_s']:.2f}, requests x{last['requests'] / first['requests']:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(int(sys.argv[2]))
    else:
        main([int(a) for a in sys.argv[1:]] or [100, 300, 1000])
