"""Workload + environment spec -> the Kubernetes objects the `kubernetes` executor creates (pure; docs/executors.md).

Nothing here talks to a cluster. Every function returns wire-form dicts (camelCase) that the schema validation of
`dcforge synth` and the compliance rules accept as they are. How a workload maps:

- a role with `readiness` (a server) -> Deployment + Service over all its replicas; readiness -> readinessProbe;
- every other role -> Indexed Job (`completions = parallelism = nodes`) + a Service selecting index 0, created
  before the pods: its cluster IP is `{leader_address}` (no cluster DNS needed);
- `{port[NAME]}` -> a fixed container port (pods have their own network namespace), also the Service port and
  the run's NetworkPolicy allow rule;
- volumes by purpose: scratch and results are emptyDirs, checkpoints a PVC of the spec's checkpoints class;
- placement on the pool: nodeSelector from its labels, tolerations for its taints, its GPU resource, the Kueue
  queue label where the acceptance namespace has a LocalQueue of the pool, the RDMA networks and IPC_LOCK only
  where the pool has RDMA;
- restricted Pod Security: non-root, no privilege escalation, drop ALL, seccomp RuntimeDefault, read-only root
  filesystem (an emptyDir on /tmp for what Python and torch write there).

Command and environment templates (dcforge/executors/base.py) become one `/bin/sh -c` script per container:
per-pod values (`{node_index}` from JOB_COMPLETION_INDEX, `{node_address}` from the pod IP) are shell variables,
everything else is filled in here. The script forwards SIGTERM to the workload and, when it exits, prints every
file of the results volume into the pod log (`dcforge.executors.pod_results`), where `read_result` finds it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dcforge.executors.base import Resources, Role, VolumePurpose, Workload
from dcforge.manifests.common import (ACCEPTANCE_SERVICE_ACCOUNT, MANAGED_BY, POOL_LABEL, acceptance_namespace,
                                     namespaces_with_purpose)
from dcforge.manifests.gpu_node_pool import GATE_TAINT, gpu_resource_name, pool_tolerations, queue_namespaces
from dcforge.spec.models import Environment, GpuPool

RUN_LABEL = "dcforge.io/run"
"""On every object of one run (the report id): what `dcforge clean` and the end of `dcforge accept` delete by."""
EXECUTION_LABEL = "dcforge.io/execution"
"""On every object of one execution (one workload started by a check): what its selectors, watches and `stop()`
use. A run has several executions, some at once (slow_node's pairs), so the run label alone cannot tell them
apart."""
RUN_ID_ENV = "DCFORGE_RUN_ID"
"""The run id inside every container."""
ROLE_LABEL = "dcforge.io/role"
WORKLOAD_LABEL = "dcforge.io/workload"
JOB_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
"""Set by the Job controller on each pod of an Indexed Job (Kubernetes >= 1.28)."""
NODE_INDEX_LABEL = "dcforge.io/node-index"
"""The node index of a pod of a pinned role (one Job per node, `pinned_jobs`), where there is no Indexed Job."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MULTUS_NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
RDMA_CAPABILITY = "IPC_LOCK"
"""RDMA memory registration pins pages; PSS restricted refuses it, so RDMA pods need a privileged namespace."""

IMAGE_PYTHON = "python"
"""`{python}` in the acceptance image."""
IMAGE_WORKDIR = "/opt/dcforge"
"""`{workdir}` in the acceptance image: the project root, where `workloads/` is (Containerfile)."""
VOLUME_ROOT = "/dcforge"
"""Volumes are mounted at /dcforge/<purpose>."""
FIRST_PORT = 29400
"""A role's named ports are numbered from here in declaration order (torchrun's usual c10d port first)."""
CHECKPOINT_CLAIM_SIZE = "20Gi"
RUN_USER_ID = 1000
"""Non-root user (and group, fsGroup: the checkpoint volume is writable) the containers run as."""
JOB_TTL_S = 3600
"""Finished Jobs are garbage-collected by the cluster after this long even if dcforge died before its cleanup."""
NAME_LIMIT = 56
"""Object names stay this short, not 63 (a DNS label): the API server refuses an Indexed Job whose pods' hostnames,
`<job>-<index>`, would not be DNS labels themselves (seen on a real API server; the fake does not check)."""

# Per-pod values the container's shell fills in (see `role_script`).
_NODE_INDEX_VAR = "DCFORGE_NODE_INDEX"
_NODE_ADDRESS_VAR = "DCFORGE_NODE_ADDRESS"
_IS_LEADER_VAR = "DCFORGE_IS_LEADER"
_SHELL_VAR = re.compile("\0(\\w+)\0")


# The taint `dcforge accept --taint-failed` puts on a node that failed (dcforge/remediation.py).
TAINT = {"key": "dcforge.io/acceptance", "value": "failed", "effect": "NoSchedule"}
TAINT_TEXT = f"{TAINT['key']}={TAINT['value']}:{TAINT['effect']}"
QUARANTINE_TOLERATION = {**TAINT, "operator": "Equal"}
QUARANTINE_TOLERATIONS = [QUARANTINE_TOLERATION, {**GATE_TAINT, "operator": "Equal"}]
"""What node_level's pods carry on target kubernetes: a quarantined (TAINT) or gated (GATE_TAINT, a new node of a
pool with `gateNewNodes`) node is tested again, and untainted or released once it passes (every other workload keeps
off it)."""


class ObjectError(ValueError):
    """A workload or spec that cannot be expressed as Kubernetes objects; one line naming the key or role."""


@dataclass(frozen=True)
class Target:
    """Where and how one run's objects are placed: derived from the environment spec by `target_for`."""

    spec: Environment
    run_id: str
    """A DNS-1123 label (`run_label_value` of the report id)."""
    namespace: str
    image: str
    image_pull_policy: str
    pool: GpuPool | None
    execution: str = ""
    """A DNS-1123 label naming one execution (`execution_target`); empty: the run itself."""
    nodes: tuple[str, ...] = ()
    """Kubernetes node names: node i of every role runs on nodes[i] (`pinned_jobs`); empty: wherever the scheduler
    places the pods on the pool."""
    tolerations: tuple[dict[str, str], ...] = ()
    """Tolerations beyond the pool's (`tolerations_for`): node_level's pods tolerate the quarantine taint of
    `accept --taint-failed`, so a quarantined node is tested again and untainted when it passes."""
    service_addresses: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Role name -> its Service's cluster IP, once the Services exist (`workload_objects`): `{leader_address}` and
    `{role_address[ROLE]}`."""

    @property
    def scope(self) -> str:
        """What names and selects this target's objects: the execution, else the run."""
        return self.execution or self.run_id


def run_label_value(run_id: str) -> str:
    """The report id as a label value and name part: lower-case alphanumerics and '-', at most 40 characters."""
    value = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return value[:40].strip("-") or "run"


def target_for(spec: Environment, run_id: str, pool: str | None = None) -> Target:
    """The placement of a run on the environment's cluster; ObjectError naming the key when the image is missing
    or the pool unknown."""
    if not spec.acceptance.image:
        raise ObjectError("dcforge:acceptance.image is not set: the kubernetes executor runs every workload in the "
                          "acceptance image (README: building the acceptance image)")
    try:
        chosen = spec.pool(pool) if pool is not None else spec.acceptance_pool
    except KeyError:
        raise ObjectError(f"no GPU pool {pool!r} in dcforge:gpuPools") from None
    return Target(spec, run_label_value(run_id), acceptance_namespace(spec), spec.acceptance.image,
                  spec.acceptance.image_pull_policy, chosen)


def execution_target(target: Target, workload: Workload) -> Target:
    """The target of one execution of `workload`: its own scope `<workload>-<6 hex>`, unique within the run."""
    scope = f"{run_label_value(workload.name)[:24].strip('-')}-{secrets.token_hex(3)}"
    return dataclasses.replace(target, execution=scope)


def object_name(target: Target, *parts: str) -> str:
    """`dcf-<scope>-<parts>` as a DNS-1123 label; a long name keeps a hash of the full one."""
    name = "-".join(["dcf", target.scope, *(re.sub(r"[^a-z0-9-]+", "-", p.lower()) for p in parts)])
    name = re.sub(r"-+", "-", name).strip("-")
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:NAME_LIMIT - 9].rstrip('-')}-{digest}"


def labels(target: Target, workload: Workload, role: Role | None = None) -> dict[str, str]:
    out = {**MANAGED_BY, RUN_LABEL: target.run_id, EXECUTION_LABEL: target.scope,
           WORKLOAD_LABEL: run_label_value(workload.name)}
    if role is not None:
        out[ROLE_LABEL] = run_label_value(role.name)
    return out


CPU_NODE_RESOURCES = Resources(cpus=1.0, memory_mib=2048)
"""What one node of a multi-node workload asks for where the target has no GPU pool: a torchrun agent and one CPU
rank (gloo) fit in 2 GiB; no CPU limit (see `_resources`)."""


def node_resources(target: Target) -> Resources:
    """What one node of a multi-node workload (a torchrun agent and its ranks) asks for on the target's pool: every
    GPU of a node, half its CPUs and memory (the rest stays for the system, the device plugin and daemon sets), so
    each pod is one whole machine, as a node is on the other executors."""
    pool = target.pool
    if pool is None:
        return CPU_NODE_RESOURCES
    return Resources(cpus=max(1.0, pool.cpus_per_node / 2), memory_mib=pool.memory_gi_per_node * 1024 // 2,
                     gpus=pool.gpus_per_node)


def is_server(role: Role) -> bool:
    """Roles with readiness run as Deployments (servers), every other role as an Indexed Job."""
    return role.readiness is not None


def port_numbers(role: Role) -> dict[str, int]:
    return {name: FIRST_PORT + position for position, name in enumerate(role.ports)}


def volume_path(purpose: VolumePurpose) -> str:
    return f"{VOLUME_ROOT}/{purpose.value}"


def _metadata(target: Target, name: str, object_labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": target.namespace, "labels": dict(object_labels)}


def role_service(target: Target, workload: Workload, role: Role) -> dict[str, Any] | None:
    """The role's Service (None for a role without ports): index 0 of a Job (the rendezvous host), every replica
    of a server."""
    if not role.ports:
        return None
    selector = {EXECUTION_LABEL: target.scope, ROLE_LABEL: run_label_value(role.name)}
    spec: dict[str, Any] = {"type": "ClusterIP", "selector": selector, "ports": [
        {"name": _port_name(name), "protocol": "TCP", "port": number, "targetPort": number}
        for name, number in port_numbers(role).items()]}
    if not is_server(role):
        selector[NODE_INDEX_LABEL if target.nodes else JOB_INDEX_LABEL] = "0"
        spec["publishNotReadyAddresses"] = True  # the rendezvous host is reachable as soon as it listens
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(target, object_name(target, role.name), labels(target, workload, role)),
            "spec": spec}


def checkpoint_claim(target: Target, workload: Workload, role: Role) -> dict[str, Any] | None:
    """The role's checkpoints volume (None when the workload declares none): a PVC of the spec's checkpoints
    StorageClass (or the workload's `checkpoint_class`, of its `checkpoint_size_gi`), in the access mode the class
    offers (ReadWriteMany for a filesystem class; a block class is
    ReadWriteOnce, which the pods of a run share only on one node)."""
    if VolumePurpose.CHECKPOINTS not in workload.volumes:
        return None
    if workload.checkpoint_class is not None:
        classes = [c for c in target.spec.storage.classes if c.name == workload.checkpoint_class]
        if not classes:
            raise ObjectError(f"dcforge:storage.classes has no class {workload.checkpoint_class!r}: the workload "
                              f"{workload.name!r} asks for a claim of it")
    else:
        classes = [c for c in target.spec.storage.classes if c.purpose == "checkpoints"]
    if not classes:
        raise ObjectError("dcforge:storage.classes has no class with purpose checkpoints: the workload "
                          f"{workload.name!r} needs a checkpoints volume")
    size = f"{workload.checkpoint_size_gi}Gi" if workload.checkpoint_size_gi else CHECKPOINT_CLAIM_SIZE
    from dcforge.manifests.storage_acceptance import access_mode  # here: that module imports the manifests package

    mode = access_mode(classes[0])
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _metadata(target, object_name(target, role.name, "checkpoints"),
                                  labels(target, workload, role)),
            "spec": {"storageClassName": classes[0].name, "accessModes": [mode],
                     "resources": {"requests": {"storage": size}}}}


def network_policy(target: Target, workload: Workload) -> dict[str, Any] | None:
    """Ingress and egress between the run's pods on exactly the roles' named ports (None when no role has any).
    Collective traffic between ranks on ephemeral ports (gloo, NCCL) is the acceptance namespace's own
    allow-same-namespace policy."""
    ports = sorted({number for role in workload.roles for number in port_numbers(role).values()})
    if not ports:
        return None
    peers = [{"podSelector": {"matchLabels": {EXECUTION_LABEL: target.scope}}}]
    allowed = [{"protocol": "TCP", "port": port} for port in ports]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(target, object_name(target, workload.name, "ports"), labels(target, workload)),
            "spec": {"podSelector": {"matchLabels": {EXECUTION_LABEL: target.scope}},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": peers, "ports": allowed}],
                     "egress": [{"to": peers, "ports": allowed}]}}


def workload_secret(target: Target, workload: Workload, owner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The workload's secret files (None without a secrets volume) as one Secret, mounted read-only by every pod
    of the execution: no secret in a pod spec, a command line or an environment value. Created right after the
    Jobs and Deployments, owned by `owner` (the first of them, as created): the executor may create and delete
    Secrets but not list them, so the garbage collector removes a Secret whose run ended without its cleanup
    together with its owner. The pods wait for the mount meanwhile (the kubelet retries it)."""
    if VolumePurpose.SECRETS not in workload.volumes:
        return None
    meta = _metadata(target, secret_name(target), labels(target, workload))
    meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "data": {name: base64.b64encode(content).decode("ascii") for name, content in workload.secrets.items()}}


def secret_name(target: Target) -> str:
    return object_name(target, "secrets")


def prerequisite_objects(target: Target, workload: Workload) -> list[dict[str, Any]]:
    """What must exist before any pod starts, in creation order: the NetworkPolicy, the checkpoint claims and the
    Services (whose cluster IPs the pods are given as `{leader_address}`)."""
    objects = [network_policy(target, workload)]
    objects += [checkpoint_claim(target, workload, role) for role in workload.roles]
    objects += [role_service(target, workload, role) for role in workload.roles]
    return [obj for obj in objects if obj is not None]


def workload_objects(target: Target, workload: Workload, leader_addresses: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Jobs and Deployments, one per role. `leader_addresses`: role name -> its Service's cluster IP."""
    target = dataclasses.replace(target, service_addresses=dict(leader_addresses))
    objects = []
    for role in workload.roles:
        leader = leader_addresses.get(role.name)
        if target.nodes:
            objects += pinned_jobs(target, workload, role, leader)
        else:
            objects.append((role_deployment if is_server(role) else role_job)(target, workload, role, leader))
    return objects


def role_job(target: Target, workload: Workload, role: Role, leader_address: str | None) -> dict[str, Any]:
    """An Indexed Job: one pod per node, index = `{node_index}`; the first failed pod fails the Job (no retries:
    a lost rank is a failed run, as on the other executors), unless the role asks for `replacements` (a pod lost
    to `kill_node` is replaced that many times in all) or is elastic (`min_nodes`: the others go on)."""
    pod_labels = labels(target, workload, role)
    job_labels = {**pod_labels, **_queue_label(target)}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": _metadata(target, object_name(target, role.name), job_labels),
           "spec": {"completionMode": "Indexed", "completions": role.nodes, "parallelism": role.nodes,
                    "backoffLimit": role.replacements, "activeDeadlineSeconds": max(1, int(workload.timeout_s)),
                    "ttlSecondsAfterFinished": JOB_TTL_S,
                    "template": {"metadata": _pod_metadata(target, pod_labels),
                                 "spec": pod_spec(target, workload, role, leader_address, "Never")}}}
    if role.min_nodes is not None and role.min_nodes < role.nodes:
        # an elastic role goes on without lost nodes: each index may fail once, without retry, and the Job keeps
        # running the others while no more than nodes - min_nodes have (Kubernetes >= 1.29; backoffLimit would
        # end the whole Job, and its pods, at the first loss)
        del job["spec"]["backoffLimit"]
        job["spec"].update(backoffLimitPerIndex=0, maxFailedIndexes=role.nodes - role.min_nodes)
    return job


def role_deployment(target: Target, workload: Workload, role: Role,
                    leader_address: str | None) -> dict[str, Any]:
    """A Deployment of `nodes` interchangeable replicas; the role's readiness becomes the readinessProbe."""
    pod_labels = labels(target, workload, role)
    selector = {EXECUTION_LABEL: target.scope, ROLE_LABEL: run_label_value(role.name)}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(target, object_name(target, role.name), pod_labels),
            "spec": {"replicas": role.nodes, "selector": {"matchLabels": selector},
                     "template": {"metadata": _pod_metadata(target, {**pod_labels, **_queue_label(target)}),
                                  "spec": pod_spec(target, workload, role, leader_address, "Always")}}}


def _queue_label(target: Target) -> dict[str, str]:
    """Kueue admits the run through the pool's LocalQueue where the acceptance namespace has one (GpuNodePool
    declares it in the namespaces its ClusterQueue admits)."""
    pool = target.pool
    if pool is None or target.namespace not in queue_namespaces(target.spec, pool):
        return {}
    return {KUEUE_QUEUE_LABEL: pool.name}


def _pod_metadata(target: Target, pod_labels: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": dict(pod_labels)}
    if _uses_rdma(target):
        meta["annotations"] = {MULTUS_NETWORKS_ANNOTATION: rdma_networks(target.spec)}
    return meta


def _uses_rdma(target: Target) -> bool:
    return bool(target.pool is not None and target.pool.rdma and target.spec.network.rdma.enabled)


def rdma_networks(spec: Environment) -> str:
    """The RDMA rails' NetworkAttachmentDefinitions (ClusterNetwork declares them in the training namespaces)."""
    home = (namespaces_with_purpose(spec, "training") or ["training"])[0]
    return ",".join(f"{home}/rdma-rail-{rail}" for rail in range(len(spec.network.rdma.interfaces)))


def pod_spec(target: Target, workload: Workload, role: Role, leader_address: str | None,
             restart_policy: str) -> dict[str, Any]:
    pool = target.pool
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "serviceAccountName": ACCEPTANCE_SERVICE_ACCOUNT,  # its token is not mounted
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # addresses come from the Services' cluster IPs, not injected variables
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_USER_ID, "runAsGroup": RUN_USER_ID,
                            "fsGroup": RUN_USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container(target, workload, role, leader_address)],
        "volumes": _volumes(target, workload, role),
    }
    if pool is not None:
        spec["nodeSelector"] = pool_selector(pool)
    if tolerations := tolerations_for(target):
        spec["tolerations"] = tolerations
    return spec


def tolerations_for(target: Target) -> list[dict[str, str]]:
    """The taints the target's pods tolerate: the pool's, then the target's own."""
    return [*(pool_tolerations(target.pool) if target.pool is not None else []), *target.tolerations]


def pool_selector(pool: GpuPool) -> dict[str, str]:
    """The labels of the pool's nodes: the pods' nodeSelector, and what `KubernetesExecutor.pool_nodes` lists by."""
    return {POOL_LABEL: pool.name, **pool.labels}


def pinned_jobs(target: Target, workload: Workload, role: Role, leader_address: str | None) -> list[dict[str, Any]]:
    """A role pinned to `target.nodes`: one single-pod Job per node, node i on `target.nodes[i]` by a required node
    affinity on the node's name (the `metadata.name` field: the hostname label need not equal it). The pods of an
    Indexed Job share one template, so one Job cannot place index i on a named node; each of these Jobs says which
    index its pod is (NODE_INDEX_LABEL, for the leader Service and the executor; JOB_COMPLETION_INDEX, which the
    script reads as on an Indexed Job: a NonIndexed Job's controller does not set it)."""
    if is_server(role):
        raise ObjectError(f"role {role.name!r}: a server role (readiness) cannot be pinned to named nodes")
    if role.nodes != len(target.nodes):
        raise ObjectError(f"role {role.name!r} has {role.nodes} nodes, but the run is pinned to "
                          f"{len(target.nodes)} Kubernetes nodes ({', '.join(target.nodes)})")
    jobs = []
    for index, node in enumerate(target.nodes):
        job = role_job(target, workload, role, leader_address)
        job["metadata"]["name"] = job_names(target, role)[index]
        job["spec"].update(completionMode="NonIndexed", completions=1, parallelism=1)
        template = job["spec"]["template"]
        template["metadata"]["labels"][NODE_INDEX_LABEL] = str(index)
        template["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}
        template["spec"]["containers"][0]["env"].append({"name": "JOB_COMPLETION_INDEX", "value": str(index)})
        jobs.append(job)
    return jobs


def job_names(target: Target, role: Role) -> list[str]:
    """The role's Job names: one Indexed Job, or one Job per pinned node."""
    if not target.nodes:
        return [object_name(target, role.name)]
    return [object_name(target, role.name, f"n{index}") for index in range(len(target.nodes))]


def _volumes(target: Target, workload: Workload, role: Role) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    for purpose in workload.volumes:
        if purpose is VolumePurpose.CHECKPOINTS:
            volumes.append({"name": purpose.value, "persistentVolumeClaim": {
                "claimName": object_name(target, role.name, "checkpoints")}})
        elif purpose is VolumePurpose.SECRETS:  # 0440 with group fsGroup: readable by the run's user only
            volumes.append({"name": purpose.value, "secret": {"secretName": secret_name(target),
                                                              "defaultMode": 0o440}})
        else:
            volumes.append({"name": purpose.value, "emptyDir": {}})
    return volumes


def container(target: Target, workload: Workload, role: Role, leader_address: str | None) -> dict[str, Any]:
    script, shell_env = role_script(target, workload, role, leader_address)
    ports = port_numbers(role)
    body: dict[str, Any] = {
        "name": "node",
        "image": target.image,
        "imagePullPolicy": target.image_pull_policy,
        "command": ["/bin/sh", "-c", script],
        "workingDir": IMAGE_WORKDIR,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"},
                {"name": RUN_ID_ENV, "value": target.run_id},
                {"name": _NODE_ADDRESS_VAR, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                *({"name": key, "value": value} for key, value in shell_env.items())],
        "resources": _resources(target, role),
        "securityContext": _container_security(target),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         *({"name": p.value, "mountPath": volume_path(p), "readOnly": p is VolumePurpose.SECRETS}
                           for p in workload.volumes)],
    }
    if ports:
        body["ports"] = [{"name": _port_name(name), "containerPort": number, "protocol": "TCP"}
                         for name, number in ports.items()]
    if is_server(role):
        body["readinessProbe"], body["livenessProbe"] = _probes(role)
    return body



def _port_name(name: str) -> str:
    """An IANA service name (at most 15 characters, lower-case alphanumerics and '-')."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:15].strip("-")
    return cleaned or "port"


def _resources(target: Target, role: Role) -> dict[str, Any]:
    cpu = f"{max(1, round(role.resources.cpus * 1000))}m"
    memory = f"{role.resources.memory_mib}Mi"
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    limits: dict[str, Any] = {"memory": memory}  # no CPU limit: CFS throttling stalls NCCL and data loaders
    if role.resources.gpus:
        if target.pool is None:
            raise ObjectError(f"role {role.name!r} asks for {role.resources.gpus} GPUs but dcforge:gpuPools "
                              "declares no pool")
        gpu = gpu_resource_name(target.pool)
        requests[gpu] = limits[gpu] = role.resources.gpus  # extended resources: requests equal limits
    return {"requests": requests, "limits": limits}


def _container_security(target: Target) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if _uses_rdma(target):
        capabilities["add"] = [RDMA_CAPABILITY]
    return {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "capabilities": capabilities,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _probes(role: Role) -> tuple[dict[str, Any], dict[str, Any]]:
    """readinessProbe from the role's readiness (an HTTP path or a TCP port; a log line is watched by the executor
    through the API, the probe then only says the process is alive), and a lenient livenessProbe of the same
    kind."""
    readiness = role.readiness
    assert readiness is not None
    if readiness.port is not None:
        if readiness.port not in role.ports:
            raise ObjectError(f"role {role.name!r}: readiness port {readiness.port!r} is not one of its ports")
        number = port_numbers(role)[readiness.port]
        action: dict[str, Any] = ({"httpGet": {"path": readiness.http_path, "port": number}}
                                  if readiness.http_path else {"tcpSocket": {"port": number}})
    else:
        action = {"exec": {"command": ["/bin/sh", "-c", "kill -0 1"]}}
    ready = {**action, "periodSeconds": 2, "failureThreshold": max(1, int(readiness.timeout_s // 2))}
    live = {**action, "initialDelaySeconds": max(1, int(readiness.timeout_s)), "periodSeconds": 10,
            "failureThreshold": 6}
    return ready, live


def role_script(target: Target, workload: Workload, role: Role,
                leader_address: str | None) -> tuple[str, dict[str, str]]:
    """The container's `/bin/sh -c` script and the role's constant environment (values without per-pod parts).

    Templates are filled here; per-pod values stay shell variables (`"${DCFORGE_NODE_INDEX}"`), every literal is
    quoted. The shell runs the workload in the background and forwards SIGTERM (a shell as PID 1 would ignore it),
    then prints the results volume into the log and exits with the workload's code.
    """
    fields = _fields(target, workload, role, leader_address)
    command = " ".join(_shell_word(part.format(**fields)) for part in role.command)
    constant_env, exported = {}, []
    for key, value in role.env.items():
        filled = value.format(**fields)
        if _SHELL_VAR.search(filled):
            exported.append(f"export {key}={_shell_word(filled)}")
        else:
            constant_env[key] = filled
    results = volume_path(VolumePurpose.RESULTS) if VolumePurpose.RESULTS in workload.volumes else ""
    lines = [
        f"{_NODE_INDEX_VAR}=\"${{JOB_COMPLETION_INDEX:-0}}\"",
        f"{_IS_LEADER_VAR}=false; [ \"${_NODE_INDEX_VAR}\" = 0 ] && {_IS_LEADER_VAR}=true",
        *exported,
        f"{command} &",
        "child=$!",
        "trap 'kill -TERM \"$child\" 2>/dev/null' TERM INT",
        "wait \"$child\"; code=$?",
        "if kill -0 \"$child\" 2>/dev/null; then wait \"$child\"; code=$?; fi",
    ]
    if results:
        lines.append(f"{IMAGE_PYTHON} -m dcforge.executors.pod_results {shlex.quote(results)} || true")
    lines.append("exit \"$code\"")
    return "\n".join(lines) + "\n", constant_env


class _Refused(dict):
    """A template field a role cannot use on Kubernetes: formatting it raises ObjectError naming the role."""

    def __init__(self, role: Role, field: str, why: str):
        super().__init__()
        self.message = f"role {role.name!r}: {{{field}}} is not available on kubernetes: {why}"

    def __format__(self, spec: str) -> str:
        raise ObjectError(self.message)

    def __getitem__(self, key: str) -> str:
        raise ObjectError(self.message)


def _fields(target: Target, workload: Workload, role: Role, leader_address: str | None) -> dict[str, object]:
    server = is_server(role)
    replicas = server and role.nodes > 1
    why_index = "replicas of a server role are interchangeable"
    return {
        "node_index": _Refused(role, "node_index", why_index) if replicas else _var(_NODE_INDEX_VAR),
        "node_count": role.nodes,
        "node_address": _var(_NODE_ADDRESS_VAR),
        "leader_address": leader_address if leader_address and role.ports else _Refused(
            role, "leader_address", "the leader is reached through the role's Service, and the role has no ports"),
        "is_leader": _Refused(role, "is_leader", why_index) if replicas else _var(_IS_LEADER_VAR),
        "port": port_numbers(role),
        "volume": {p.value: volume_path(p) for p in workload.volumes},
        "role_address": _RoleAddresses(role, target.service_addresses),
        "role_port": {other.name: port_numbers(other) for other in workload.roles},
        "python": IMAGE_PYTHON,
        "workdir": IMAGE_WORKDIR,
    }


class _RoleAddresses(dict):
    """`{role_address[ROLE]}`: the cluster IP of ROLE's Service; ObjectError naming the role for a role without
    one (no ports, or not in the workload)."""

    def __init__(self, role: Role, addresses: Mapping[str, str]):
        super().__init__(addresses)
        self.role = role

    def __missing__(self, key: str) -> str:
        raise ObjectError(f"role {self.role.name!r}: {{role_address[{key}]}}: the workload has no role {key!r} "
                          "with ports (only a role with ports has a Service)")


def _var(name: str) -> str:
    return f"\0{name}\0"


def _shell_word(text: str) -> str:
    """One shell word: literal pieces single-quoted, per-pod pieces as double-quoted variable expansions."""
    pieces = _SHELL_VAR.split(text)
    out = []
    for position, piece in enumerate(pieces):
        if position % 2:
            out.append(f"\"${{{piece}}}\"")
        elif piece:
            out.append(shlex.quote(piece))
    return "".join(out) or "''"
