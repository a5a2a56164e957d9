"""The six platform components and the function that builds all of them from one validated spec.

Each component is a thin `ComponentResource` over the pure manifest builders of `dcforge.manifests`: the builders
decide *what* a GPU pool, the storage layer or the security baseline consists of; the components only declare it
with Pulumi (typed resources, parents, dependency order, secrets).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pulumi

from .base import ManifestComponent, StackRegistry, component_order


class _Component(ManifestComponent):
    OUTPUT_KINDS: ClassVar[dict[str, str]] = {}
    """Output name -> kind whose object names the component exports beside the generic summary."""

    def summary(self) -> dict[str, Any]:
        outputs = super().summary()
        for output, kind in self.OUTPUT_KINDS.items():
            outputs[output] = sorted(
                f"{key.namespace}/{key.name}" if key.namespace else key.name
                for key in self.objects if key.kind == kind
            )
        return outputs


class GpuNodePool(_Component):
    """Node labels/taints (NodePatch), Kueue ResourceFlavor + ClusterQueue + LocalQueues, PriorityClasses,
    device-plugin sharing (time-slicing / MIG) config of one GPU pool."""

    TYPE_TOKEN = "dcforge:index:GpuNodePool"
    OUTPUT_KINDS = {"patchedNodes": "Node", "clusterQueues": "ClusterQueue", "localQueues": "LocalQueue"}


class GpuOperator(_Component):
    """NVIDIA GPU Operator release, pinned, with values derived from the spec."""

    TYPE_TOKEN = "dcforge:index:GpuOperator"


class DistributedStorage(_Component):
    """Rook-Ceph (operator, CephCluster, pools, filesystem) or local-path/NFS, and encrypted StorageClasses."""

    TYPE_TOKEN = "dcforge:index:DistributedStorage"
    OUTPUT_KINDS = {"storageClasses": "StorageClass"}


class ClusterNetwork(_Component):
    """Namespaces with Pod Security Admission labels, default-deny NetworkPolicies, RDMA secondary networks."""

    TYPE_TOKEN = "dcforge:index:ClusterNetwork"
    OUTPUT_KINDS = {"namespaces": "Namespace", "networkPolicies": "NetworkPolicy",
                    "secondaryNetworks": "NetworkAttachmentDefinition"}


class SecurityBaseline(_Component):
    """cert-manager, CA issuer and certificates, RBAC roles and bindings, ServiceAccounts, quotas, secrets."""

    TYPE_TOKEN = "dcforge:index:SecurityBaseline"
    OUTPUT_KINDS = {"clusterIssuers": "ClusterIssuer", "certificates": "Certificate",
                    "resourceQuotas": "ResourceQuota"}


class Acceptance(_Component):
    """The namespace, ServiceAccount and least-privilege Role the acceptance harness runs with."""

    TYPE_TOKEN = "dcforge:index:Acceptance"
    OUTPUT_KINDS = {"serviceAccounts": "ServiceAccount", "roles": "Role"}


# A program declaring thousands of resources allocates long-lived objects (resources, Outputs, futures) fast; with
# CPython's default thresholds the collector makes dozens of full passes over the growing heap, about half of the
# run time and growing faster than the resource count (benchmarks/stacks_scale.py). Young objects are collected
# rarely instead: the program is short-lived and its garbage small next to the Pulumi SDK itself.
DECLARATION_GC_THRESHOLDS = (50_000, 20, 20)

COMPONENTS: dict[str, type[ManifestComponent]] = {
    cls.__name__: cls
    for cls in (GpuNodePool, GpuOperator, DistributedStorage, ClusterNetwork, SecurityBaseline, Acceptance)
}


def declare_platform(component_manifests: list[Any], opts: pulumi.ResourceOptions | None = None,
                     local_charts: str | None = None) -> list[ManifestComponent]:
    """Declare already-built `ComponentManifests` in dependency order; returns the components in that order."""
    registry = StackRegistry(local_charts=local_charts)
    declared = []
    for manifests in component_order(component_manifests):
        cls = COMPONENTS.get(manifests.component)
        if cls is None:
            raise ValueError(f"no Pulumi component for manifests of {manifests.component!r}; "
                             f"known: {', '.join(COMPONENTS)}")
        declared.append(cls(manifests, registry, opts))
    return declared


def build_platform(spec: Any, opts: pulumi.ResourceOptions | None = None,
                   local_charts: str | None = None) -> list[ManifestComponent]:
    """Every component of an environment, from the same pure builders `dcforge synth` uses."""
    from dcforge.manifests import build_all

    return declare_platform(build_all(spec), opts, local_charts)
