"""Every component of an environment, in the order they depend on each other."""

from __future__ import annotations

from dcforge.manifests.components import ComponentManifests
from dcforge.manifests.gpu_operator import gpu_operator
from dcforge.manifests.acceptance import acceptance
from dcforge.manifests.cluster_network import cluster_network
from dcforge.manifests.gpu_node_pool import gpu_node_pool
from dcforge.manifests.security_baseline import security_baseline
from dcforge.manifests.distributed_storage import distributed_storage
from dcforge.spec.models import Environment

__all__ = ["acceptance", "build_all", "cluster_network", "distributed_storage", "gpu_node_pool", "gpu_operator",
           "security_baseline"]


def build_all(spec: Environment) -> list[ComponentManifests]:
    """Namespaces first (ClusterNetwork), then RBAC and certificates, the GPU stack (Kueue CRDs before the pools'
    queues), storage, one GpuNodePool per pool, and the acceptance access. An environment without GPU pools gets
    no GPU stack."""
    components = [cluster_network(spec), security_baseline(spec)]
    if spec.gpu_pools:
        components.append(gpu_operator(spec))
    components.append(distributed_storage(spec))
    components += [gpu_node_pool(spec, pool) for pool in spec.gpu_pools]
    components.append(acceptance(spec))
    return components
