"""The types of dcforge.manifests: kept apart from the package's __init__, which re-exports
them with its submodules' entry points, so that the submodules import them without an import cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HELM_RELEASE_API_VERSION = "dcforge.io/v1alpha1"


@dataclass(frozen=True)
class HelmRelease:
    """A Helm chart installation, pinned; `values` are derived from the spec."""

    name: str
    """Release name."""
    namespace: str
    """Namespace the release installs into (created by the component when missing)."""
    chart: str
    """Chart name inside the repository, e.g. `gpu-operator`."""
    version: str
    """Pinned chart version, e.g. `v24.9.2`."""
    repository: str
    """Chart repository URL."""
    values: dict[str, Any] = field(default_factory=dict)
    """Chart values (camelCase, as the chart expects)."""

    def to_manifest(self) -> dict[str, Any]:
        """The release as a pseudo-manifest for `dcforge synth` output (GitOps readable, not a cluster kind)."""
        return {
            "apiVersion": HELM_RELEASE_API_VERSION,
            "kind": "HelmRelease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "chart": self.chart,
                "version": self.version,
                "repository": self.repository,
                "values": self.values,
            },
        }


@dataclass(frozen=True)
class ComponentManifests:
    """Everything one Pulumi component declares."""

    component: str
    """Component type name: GpuNodePool, GpuOperator, DistributedStorage, ClusterNetwork, SecurityBaseline, Acceptance."""
    name: str
    """Resource name of the component, e.g. the pool name or `platform`."""
    manifests: list[dict[str, Any]] = field(default_factory=list)
    """Kubernetes objects in wire form, in dependency order."""
    releases: list[HelmRelease] = field(default_factory=list)
    """Helm releases the component installs: after its own Namespaces, before the custom resources they serve."""

    def all_objects(self) -> list[dict[str, Any]]:
        """Apply order, as synth writes it: own Namespaces, then the releases (which install into them and bring
        the CRDs), then every other manifest."""
        namespaces = [m for m in self.manifests if m.get("kind") == "Namespace"]
        others = [m for m in self.manifests if m.get("kind") != "Namespace"]
        return namespaces + [release.to_manifest() for release in self.releases] + others
