"""GpuNodePool: node labels and taints, Kueue flavor/queues and the pool's device-plugin selection."""

from __future__ import annotations

from typing import Any

from dcforge.manifests.components import ComponentManifests
from dcforge.manifests.common import POOL_LABEL, PURPOSE_LABEL, metadata, namespaces_with_purpose
from dcforge.spec.models import Environment, GpuPool

KUEUE_API = "kueue.x-k8s.io/v1beta1"
GPU_RESOURCE = "nvidia.com/gpu"
# GPU Operator node labels that pick a key of the device-plugin ConfigMap and a mig-parted profile.
DEVICE_PLUGIN_CONFIG_LABEL = "nvidia.com/device-plugin.config"
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
# Slices of one GPU per MIG compute size (A100/H100/H200 have 7 compute slices).
def gpu_resource_name(pool: GpuPool) -> str:
    """The extended resource pods request on this pool (MIG mixed strategy exposes one resource per profile)."""
    sharing = pool.sharing
    if sharing.mode == "mig" and sharing.mig_strategy == "mixed" and sharing.mig_profile:
        return f"nvidia.com/mig-{sharing.mig_profile}"
    return GPU_RESOURCE


def pool_node_labels(pool: GpuPool) -> dict[str, str]:
    labels = {POOL_LABEL: pool.name, PURPOSE_LABEL: pool.purpose, **pool.labels}
    if pool.sharing.mode == "time-slicing":
        labels[DEVICE_PLUGIN_CONFIG_LABEL] = pool.name
    if pool.sharing.mode == "mig":
        labels[MIG_CONFIG_LABEL] = (f"all-{pool.sharing.mig_profile}" if pool.sharing.mig_profile
                                    else "all-balanced")
    return labels


def pool_taints(pool: GpuPool) -> list[dict[str, str]]:
    return [{"key": t.key, "value": t.value, "effect": t.effect} if t.value else {"key": t.key, "effect": t.effect}
            for t in pool.taints]


GATE_TAINT = {"key": "dcforge.io/validation", "value": "pending", "effect": "NoSchedule"}
"""`gateNewNodes: true`: a node joins with it and keeps it until node-level acceptance passes on it and
`dcforge accept --taint-failed` removes it (dcforge/remediation.py imports it from here). Not in the Kueue flavor:
no workload is admitted with a toleration for it."""


def registration_taints(pool: GpuPool) -> list[dict[str, str]]:
    """The taints a node of the pool is declared with: the pool's own, and the validation gate where declared."""
    return [*pool_taints(pool), *([dict(GATE_TAINT)] if pool.gate_new_nodes else [])]


def pool_tolerations(pool: GpuPool) -> list[dict[str, str]]:
    return [{**taint, "operator": "Equal" if "value" in taint else "Exists"} for taint in pool_taints(pool)]


def queue_namespaces(spec: Environment, pool: GpuPool) -> list[str]:
    """Namespaces that may submit to this pool: teams with a quota on it, the platform namespaces of its purpose
    and the acceptance namespace when acceptance runs on this pool."""
    names = [team.namespace for team in spec.security.teams if team.gpu_quota.get(pool.name, 0) > 0]
    if pool.purpose in ("training", "inference"):
        names += namespaces_with_purpose(spec, pool.purpose)
    if spec.acceptance_pool is not None and spec.acceptance_pool.name == pool.name:
        names += namespaces_with_purpose(spec, "acceptance") or ["acceptance"]
    return list(dict.fromkeys(names))


def resource_flavor(pool: GpuPool) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeLabels": {POOL_LABEL: pool.name}}
    if pool.taints:
        spec["nodeTaints"] = pool_taints(pool)
        spec["tolerations"] = pool_tolerations(pool)
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": metadata(pool.name), "spec": spec}


def cluster_queue(spec: Environment, pool: GpuPool) -> dict[str, Any]:
    quota = pool.quota
    gpu_resource = gpu_resource_name(pool)
    nominal = {
        "cpu": quota.cpu if quota.cpu is not None else pool.cpus_per_node * pool.size,
        "memory": f"{quota.memory_gi if quota.memory_gi is not None else pool.memory_gi_per_node * pool.size}Gi",
        gpu_resource: quota.gpus if quota.gpus is not None else pool.schedulable_gpus,
    }
    return {
        "apiVersion": KUEUE_API,
        "kind": "ClusterQueue",
        "metadata": metadata(pool.name, labels={POOL_LABEL: pool.name}),
        "spec": {
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": queue_namespaces(spec, pool)}]},
            "queueingStrategy": "BestEffortFIFO",
            "preemption": {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"},
            "resourceGroups": [{
                "coveredResources": list(nominal),
                "flavors": [{"name": pool.name, "resources": [
                    {"name": name, "nominalQuota": value} for name, value in nominal.items()]}],
            }],
        },
    }


def local_queue(pool: GpuPool, namespace_name: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE_API,
        "kind": "LocalQueue",
        "metadata": metadata(pool.name, namespace_name, labels={POOL_LABEL: pool.name}),
        "spec": {"clusterQueue": pool.name},
    }


def node_patch(pool: GpuPool, node_name: str) -> dict[str, Any]:
    """A named bare-metal node: only labels and taints are declared (the stacks apply it as a NodePatch)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name, "labels": pool_node_labels(pool)},
        "spec": {"taints": registration_taints(pool)},
    }


def gpu_node_pool(spec: Environment, pool: GpuPool) -> ComponentManifests:
    manifests = [node_patch(pool, node) for node in pool.nodes]
    manifests.append(resource_flavor(pool))
    manifests.append(cluster_queue(spec, pool))
    manifests.extend(local_queue(pool, ns) for ns in queue_namespaces(spec, pool))
    return ComponentManifests(component="GpuNodePool", name=pool.name, manifests=manifests)
