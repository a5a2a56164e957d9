"""The kubernetes executor's objects: schema-valid (strict) for the spec's Kubernetes version, compliant with the
project's own rules, placed on the declared pool, and carrying what the workload templates need."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from dcforge.compliance import evaluate, exceptions_for, unexcepted
from dcforge.errors import ConfigErrors
from dcforge.executors.base import Readiness, Resources, Role, VolumePurpose, Workload
from dcforge.executors.kubernetes_objects import (
    CPU_NODE_RESOURCES,
    IMAGE_WORKDIR,
    JOB_INDEX_LABEL,
    KUEUE_QUEUE_LABEL,
    NODE_INDEX_LABEL,
    MULTUS_NETWORKS_ANNOTATION,
    RUN_LABEL,
    RUN_USER_ID,
    ObjectError,
    node_resources,
    object_name,
    prerequisite_objects,
    target_for,
    workload_objects,
    workload_secret,
)
from dcforge.executors.pod_results import parse_results, result_lines
from dcforge.placement.torchrun import TorchrunJob, torchrun_workload
from dcforge.spec import load_environment
from dcforge.spec.models import Environment
from dcforge.synth import schema_validate, synthesize

IMAGE = "registry.example/dcforge:0.1.0"


def spec_of(env: str, image: str | None = IMAGE, **acceptance) -> Environment:
    spec = load_environment(env).spec
    data = spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "image": image, **acceptance}
    return Environment.model_validate(data)


def training(nodes: int = 2, gpus: int = 0) -> Workload:
    workload = torchrun_workload("train", TorchrunJob("train.py", ("--out", "{volume[results]}/train.json"),
                                                      nnodes=nodes))
    role = workload.roles[0]
    return Workload(workload.name, (Role(role.name, role.command, role.env, role.nodes,
                                         Resources(cpus=2, memory_mib=4096, gpus=gpus), role.ports),),
                    workload.volumes, workload.timeout_s)


def serving(replicas: int = 2) -> Workload:
    server = Role("server", ("{python}", "-m", "workloads.serving", "--port", "{port[http]}"), nodes=replicas,
                  ports=("http",), readiness=Readiness(port="http", timeout_s=30))
    client = Role("loadgen", ("{python}", "-m", "loadtests.run", "--users", "{node_count}"), nodes=1)
    return Workload("inference", (server, client))


def cluster_inference() -> Workload:
    """What `inference` runs on target kubernetes: the server Deployment, the load Job, the API key Secret."""
    from dcforge.checks.inference import InferenceConfig
    from dcforge.placement.serving import inference_workload

    return inference_workload(InferenceConfig(), 32, "test-key", 0, 120.0, 300.0)


def all_objects(spec: Environment, workload: Workload, pool: str | None = None) -> list[dict]:
    """Every object of the workload, the Secret (if any) owned by the first controller as the executor makes it."""
    target = target_for(spec, "2026-11-30T18:00 report/7", pool)
    before = prerequisite_objects(target, workload)
    addresses = {role.name: "10.96.0.10" for role in workload.roles}
    controllers = workload_objects(target, workload, addresses)
    first = controllers[0]
    secret = workload_secret(target, workload, {**first, "metadata": {**first["metadata"],
                                                                      "uid": "6c0ffee0-0000-4000-8000-000000000001"}})
    return before + controllers + ([secret] if secret is not None else [])


def pod_specs(objects: list[dict]) -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Job", "Deployment")]


@pytest.mark.parametrize("env", ["local", "dev", "prod", "cluster"])
@pytest.mark.parametrize("workload", [training(), training(nodes=1, gpus=1), serving(), cluster_inference()],
                         ids=["job", "gpu", "server", "inference"])
def test_objects_validate_strictly_and_comply(env, workload):
    spec = spec_of(env)
    if env == "prod":  # the prod acceptance pool has RDMA: covered on its own below
        spec = spec_of(env, pool="infer-l40s")
    if env in ("local", "cluster") and workload.roles[0].resources.gpus:
        pytest.skip(f"the {env} environment declares no GPU pool")
    objects = all_objects(spec, workload)
    report = schema_validate(objects, spec.versions.kubernetes)
    assert report.errors == [] and not report.skipped and report.validated == len(objects)
    stack = [obj for chunk in synthesize(spec).values() for obj in chunk]
    assert unexcepted(evaluate(stack + objects, exceptions_for(spec))) == []
    assert all(o["metadata"]["labels"][RUN_LABEL] == "2026-11-30t18-00-report-7" for o in objects)
    assert {o["metadata"]["namespace"] for o in objects} == {"acceptance"}


def test_indexed_job_service_and_ports():
    objects = all_objects(spec_of("dev"), training(nodes=3))
    kinds = [o["kind"] for o in objects]
    assert kinds == ["NetworkPolicy", "PersistentVolumeClaim", "Service", "Job"]  # creation order
    policy, claim, service, job = objects
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert service["spec"]["selector"][JOB_INDEX_LABEL] == "0"  # the rendezvous host only
    assert service["spec"]["ports"] == [{"name": "rendezvous", "protocol": "TCP", "port": 29400,
                                         "targetPort": 29400}]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 29400}]
    assert policy["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 29400}]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # dev's checkpoints class is block storage
    assert claim["spec"]["storageClassName"] == next(c.name for c in spec_of("dev").storage.classes
                                                     if c.purpose == "checkpoints")


def test_the_container_script_fills_per_pod_values_in_a_real_shell(tmp_path):
    """The script runs under /bin/sh as in the pod: per-pod values expand, literals stay one word each, the exit
    code is the workload's."""
    (job,) = [o for o in all_objects(spec_of("dev"), training(nodes=3)) if o["kind"] == "Job"]
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\nfor a in "$@"; do echo "ARG:$a"; done\n[ "$1" = -m ] && [ "$2" = '
                           'dcforge.executors.pod_results ] && exit 0\nexit 3\n')
    fake_python.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": "1", "DCFORGE_NODE_ADDRESS": "10.1.2.3"}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    args = [line[4:] for line in done.stdout.splitlines() if line.startswith("ARG:")]
    assert done.returncode == 3  # the workload's exit code, after the results were printed
    assert "--rdzv-endpoint=10.96.0.10:29400" in args  # the Service's cluster IP: no DNS
    assert "--local-addr=10.1.2.3" in args and "--nnodes=3" in args
    assert any(a.startswith("--rdzv-conf=is_host=false,") for a in args)  # index 1 does not host the store
    assert args[-2:] == ["dcforge.executors.pod_results", "/dcforge/results"]
    env["JOB_COMPLETION_INDEX"] = "0"
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert "ARG:--rdzv-conf=is_host=true,join_timeout=60" in done.stdout.splitlines()


def test_server_role_is_a_deployment_with_probes_and_a_service_over_every_replica():
    objects = all_objects(spec_of("dev"), serving())
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert deployment["spec"]["replicas"] == 2
    assert JOB_INDEX_LABEL not in service["spec"]["selector"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["tcpSocket"] == {"port": 29400}
    loadgen = next(o for o in objects if o["kind"] == "Job")
    assert "--users 1 &" in loadgen["spec"]["template"]["spec"]["containers"][0]["command"][2]


def test_placement_per_pool_kind():
    prod = spec_of("prod")  # acceptance pool train-a: taints, RDMA, quota
    (pod,) = pod_specs(all_objects(prod, training(nodes=2, gpus=8)))
    (job,) = [o for o in all_objects(prod, training(nodes=2, gpus=8)) if o["kind"] == "Job"]
    pool = prod.pool("train-a")
    assert pod["nodeSelector"] == {"dcforge.io/pool": "train-a", **pool.labels}
    assert {t["key"] for t in pod["tolerations"]} == {"nvidia.com/gpu", "dcforge.io/pool"}
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 8
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "train-a"  # a LocalQueue exists in acceptance
    assert job["spec"]["template"]["metadata"]["annotations"][MULTUS_NETWORKS_ANNOTATION].startswith("training/")
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    # RDMA needs IPC_LOCK, which restricted Pod Security refuses: the one rule it breaks.
    stack = [obj for chunk in synthesize(prod).values() for obj in chunk]
    objects = all_objects(prod, training(nodes=2, gpus=8))
    assert {v.rule_id for v in unexcepted(evaluate(stack + objects, exceptions_for(prod)))} == {"DCF-POD-008"}

    # another pool than the acceptance pool: no RDMA, and its ClusterQueue does not admit the acceptance namespace
    (pod,) = pod_specs(all_objects(prod, training(nodes=1, gpus=1), pool="infer-l40s"))
    (job,) = [o for o in all_objects(prod, training(nodes=1, gpus=1), pool="infer-l40s") if o["kind"] == "Job"]
    assert pod["nodeSelector"]["dcforge.io/pool"] == "infer-l40s"
    assert "add" not in pod["containers"][0]["securityContext"]["capabilities"]
    assert "annotations" not in job["spec"]["template"]["metadata"]
    assert KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]

    (pod,) = pod_specs(all_objects(spec_of("local"), training(nodes=1)))  # no pool at all
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert set(pod["containers"][0]["resources"]["requests"]) == {"cpu", "memory"}


def test_restricted_pod_security_and_volumes():
    (pod,) = pod_specs(all_objects(spec_of("dev"), training(nodes=1)))
    (node,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "dcforge-acceptance"
    assert node["securityContext"]["readOnlyRootFilesystem"] is True
    assert node["securityContext"]["allowPrivilegeEscalation"] is False
    assert node["image"] == IMAGE and node["imagePullPolicy"] == "IfNotPresent"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["scratch"] and "emptyDir" in volumes["results"] and "emptyDir" in volumes["tmp"]
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"].endswith("-checkpoints")
    mounts = {m["name"]: m["mountPath"] for m in node["volumeMounts"]}
    assert mounts == {"tmp": "/tmp", "scratch": "/dcforge/scratch", "checkpoints": "/dcforge/checkpoints",
                      "results": "/dcforge/results"}


def test_templates_kubernetes_cannot_fill_are_one_line_errors():
    no_ports = Workload("w", (Role("solo", ("echo", "{leader_address}")),))
    with pytest.raises(ObjectError, match="role 'solo': {leader_address} is not available on kubernetes"):
        all_objects(spec_of("dev"), no_ports)
    replicas = Workload("w", (Role("srv", ("serve", "{node_index}"), nodes=2, ports=("http",),
                                   readiness=Readiness(port="http")),))
    with pytest.raises(ObjectError, match="interchangeable"):
        all_objects(spec_of("dev"), replicas)
    with pytest.raises(ObjectError, match="dcforge:acceptance.image is not set"):
        target_for(spec_of("dev", image=None, schedule=[]), "r")


@pytest.mark.parametrize("image", ["registry.example/dcforge", "registry.example/dcforge:latest",
                                   "registry.example:5000/dcforge"])
def test_unpinned_image_is_refused_naming_the_key(env_file, image):
    path = env_file("dev", replace={"    image: registry.example/dcforge:0.1.0-cuda": f"    image: {image}"})
    with pytest.raises(ConfigErrors) as caught:
        load_environment(path=path)
    (error,) = caught.value.errors
    assert error.key == "dcforge:acceptance.image" and "not pinned" in str(error)


def test_pinned_images_are_accepted():
    assert spec_of("dev", image="registry.example:5000/team/dcforge:2026.11").acceptance.image
    assert spec_of("dev", image="r.example/dcforge@sha256:" + "a" * 64, imagePullPolicy="Always")


def test_long_names_stay_valid_labels():
    target = target_for(spec_of("dev"), "x" * 200)
    name = object_name(target, "a-very-long-role-name-" * 4, "checkpoints")
    assert len(name) <= 56 and name.startswith("dcf-") and name[-1] != "-"
    assert len(f"{name}-{999999}") <= 63  # an Indexed Job's pod hostname `<job>-<index>` is a DNS label too


def test_results_travel_through_the_log(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "train.json").write_bytes(b'{"kind": "train.result"}\n')
    (tmp_path / "sub" / "raw.bin").write_bytes(bytes(range(256)))
    out = subprocess.run([sys.executable, "-m", "dcforge.executors.pod_results", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    log = "step 1\nno newline at the end" + out + "dcforge.result fake not-base64!\n"
    assert parse_results(log) == {"train.json": b'{"kind": "train.result"}\n', "sub/raw.bin": bytes(range(256))}
    assert result_lines(tmp_path)[0].split(" ")[2] == base64.b64encode(bytes(range(256))).decode()


def test_the_containerfile_holds_what_the_pods_expect():
    """The image cannot be built here (no container runtime): its text at least agrees with the pod spec."""
    text = (Path(__file__).resolve().parents[2] / "Containerfile").read_text()
    assert f"WORKDIR {IMAGE_WORKDIR}\n" in text and f"USER {RUN_USER_ID}:{RUN_USER_ID}\n" in text
    assert all(f"COPY {part} {part}\n" in text for part in ("dcforge", "workloads", "loadtests"))
    assert "AS base-cpu" in text and "AS base-cuda" in text and "FROM base-${VARIANT}" in text
    assert "iperf3 fio" in text  # the network check's pairs and the storage check's pods run them


def test_gpus_are_the_resource_the_pools_device_plugin_advertises():
    """A MIG pool with the mixed strategy advertises one resource per profile; others `nvidia.com/gpu`."""
    data = spec_of("dev").model_dump(by_alias=True)
    data["gpuPools"][0]["sharing"] = {"mode": "mig", "migStrategy": "mixed", "migProfile": "1g.10gb"}
    mig = Environment.model_validate(data)
    (pod,) = pod_specs(all_objects(mig, training(nodes=1, gpus=2)))
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == 2
    (pod,) = pod_specs(all_objects(spec_of("dev"), training(nodes=1, gpus=1), pool="infer-l4"))  # time-slicing
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"dcforge.io/pool": "infer-l4"}
    assert schema_validate(all_objects(mig, training(nodes=1, gpus=2)), mig.versions.kubernetes).errors == []


def test_a_torchrun_node_asks_for_a_whole_machine_of_the_pool():
    """Each pod of a multi-node run is one machine, as a node is on the other executors: every GPU, half the CPUs
    and memory; without a GPU pool one CPU rank's worth."""
    dev = target_for(spec_of("dev"), "r")
    assert node_resources(dev) == Resources(cpus=56, memory_mib=1024 * 1024, gpus=8)
    assert node_resources(target_for(spec_of("cluster"), "r")) == CPU_NODE_RESOURCES
    workload = torchrun_workload("train", TorchrunJob("train.py", (), nnodes=2), node_resources(dev))
    (job,) = [o for o in all_objects(spec_of("dev"), workload) if o["kind"] == "Job"]
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 8
    assert resources["requests"]["cpu"] == "56000m" and "cpu" not in resources["limits"]


def pinned_objects(spec: Environment, workload: Workload, nodes: tuple[str, ...]) -> list[dict]:
    target = dataclasses.replace(target_for(spec, "report-7"), nodes=nodes)
    return prerequisite_objects(target, workload) + workload_objects(
        target, workload, {role.name: "10.96.0.10" for role in workload.roles})


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_a_pinned_role_is_one_job_per_named_node_and_validates_strictly(env):
    """Node i on nodes[i]: one single-pod Job each, a required affinity on the node's name, the index as a label
    (what the leader Service selects) and as JOB_COMPLETION_INDEX (what the script reads)."""
    spec = spec_of(env, pool="infer-l40s") if env == "prod" else spec_of(env)  # prod's RDMA pool: see above
    objects = pinned_objects(spec, training(nodes=2), ("gpu-node-b", "gpu-node-a"))
    assert schema_validate(objects, spec.versions.kubernetes).errors == []
    stack = [obj for chunk in synthesize(spec).values() for obj in chunk]
    assert unexcepted(evaluate(stack + objects, exceptions_for(spec))) == []
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["spec"]["selector"][NODE_INDEX_LABEL] == "0" and JOB_INDEX_LABEL not in service["spec"]["selector"]
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert [job["spec"]["completions"] for job in jobs] == [1, 1]
    assert {job["spec"]["completionMode"] for job in jobs} == {"NonIndexed"}
    for index, (job, node) in enumerate(zip(jobs, ("gpu-node-b", "gpu-node-a"))):
        template = job["spec"]["template"]
        assert template["metadata"]["labels"][NODE_INDEX_LABEL] == str(index)
        terms = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms == {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]}
        assert template["spec"]["nodeSelector"] == pod_specs([jobs[0]])[0]["nodeSelector"]  # still on the pool
        env_vars = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env_vars["JOB_COMPLETION_INDEX"] == str(index)
    assert len({job["metadata"]["name"] for job in jobs}) == 2


def test_pinning_refuses_a_role_of_another_size_and_a_server_role():
    with pytest.raises(ObjectError, match="^role 'torchrun' has 3 nodes, but the run is pinned to 2 Kubernetes "
                                          r"nodes \(a, b\)$"):
        pinned_objects(spec_of("dev"), training(nodes=3), ("a", "b"))
    with pytest.raises(ObjectError, match="cannot be pinned"):
        pinned_objects(spec_of("dev"), serving(), ("a", "b"))
