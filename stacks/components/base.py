"""The component base: declares one `ComponentManifests` (Helm releases + manifest dicts) as parented children.

Dependency order across the whole stack comes from a shared `StackRegistry`: a namespaced object depends on its
Namespace resource, a custom resource on the Helm release (or CRD object) that installs its API group. Components
are created in an order where every namespace and API group is declared before it is used (`component_order`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pulumi
import pulumi_kubernetes as k8s

from .objects import (
    ManifestError,
    ObjectKey,
    api_group,
    creation_order,
    declare_object,
    is_built_in,
    object_key,
)

# Which API groups a chart installs the CRDs of. A custom resource waits for the release that serves its group;
# a group not listed here waits for every release of its own component.
CHART_API_GROUPS: dict[str, frozenset[str]] = {
    "gpu-operator": frozenset({"nvidia.com"}),
    "network-operator": frozenset({"mellanox.com", "k8s.cni.cncf.io"}),
    "rook-ceph": frozenset({"ceph.rook.io"}),
    "cert-manager": frozenset({"cert-manager.io", "acme.cert-manager.io"}),
    "kueue": frozenset({"kueue.x-k8s.io"}),
    "multus": frozenset({"k8s.cni.cncf.io"}),
}
# Helm gives up on a release that is not ready after this long; operators pulling images on a fresh cluster are slow.
HELM_TIMEOUT_S = 900


def chart_groups(chart: str) -> frozenset[str]:
    return CHART_API_GROUPS.get(chart.rsplit("/", 1)[-1], frozenset())


@dataclass
class StackRegistry:
    """What the stack has declared so far, shared by every component of one program run."""

    namespaces: dict[str, pulumi.Resource] = field(default_factory=dict)
    group_providers: dict[str, list[pulumi.Resource]] = field(default_factory=dict)
    """API group -> the Helm releases / CRD objects that install it."""
    owners: dict[ObjectKey, str] = field(default_factory=dict)
    """Every declared object -> the component that declared it (one object, one owner)."""
    local_charts: str | None = None
    """A folder of charts (`<folder>/<chart>/Chart.yaml`) installed instead of their repositories' (air-gapped
    clusters, the engine tests): stack config `charts:localDir`."""

    def local_chart(self, chart: str) -> str | None:
        if self.local_charts is None:
            return None
        folder = Path(self.local_charts).expanduser().resolve() / chart
        return str(folder) if (folder / "Chart.yaml").is_file() else None

    def claim(self, key: ObjectKey, owner: str) -> None:
        if key in self.owners:
            raise ManifestError(f"{key} is declared by both {self.owners[key]} and {owner}")
        self.owners[key] = owner


def _release_key(release: Any) -> ObjectKey:
    return ObjectKey("helm.sh/v3", "Release", release.namespace, release.name)


class ManifestComponent(pulumi.ComponentResource):
    """Base of the six platform components; subclasses only set the type token."""

    TYPE_TOKEN: ClassVar[str] = ""

    def __init__(self, manifests: Any, registry: StackRegistry | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        if manifests.component != type(self).__name__:
            raise ManifestError(f"{type(self).__name__} got manifests of {manifests.component}")
        super().__init__(self.TYPE_TOKEN, manifests.name, None, opts)
        self.registry = registry if registry is not None else StackRegistry()
        self.owner = f"{manifests.component}/{manifests.name}"
        self.releases: dict[str, k8s.helm.v3.Release] = {}
        self.objects: dict[ObjectKey, pulumi.CustomResource] = {}
        ordered = creation_order(list(manifests.manifests))
        namespaces = [m for m in ordered if m["kind"] == "Namespace" and m["apiVersion"] == "v1"]
        # Own namespaces first (releases install into them), then the releases, then everything else.
        for manifest in namespaces:
            self._declare(manifest)
        own_releases = [self._declare_release(release) for release in manifests.releases]
        for manifest in ordered:
            if not (manifest["kind"] == "Namespace" and manifest["apiVersion"] == "v1"):
                self._declare(manifest, own_releases)
        self.register_outputs(self.summary())

    def summary(self) -> dict[str, Any]:
        """Component outputs: what it declared, readable in `pulumi stack output`."""
        return {
            "objects": [str(key) for key in self.objects],
            "releases": sorted(self.releases),
        }

    def _child_opts(self, depends_on: Iterable[pulumi.Resource]) -> pulumi.ResourceOptions:
        unique = list(dict.fromkeys(depends_on))
        return pulumi.ResourceOptions(parent=self, depends_on=unique or None)

    def _declare_release(self, release: Any) -> k8s.helm.v3.Release:
        self.registry.claim(_release_key(release), self.owner)
        namespace = self.registry.namespaces.get(release.namespace)
        if local := self.registry.local_chart(release.chart):
            chart, repository_opts = local, None
        elif release.repository.startswith("oci://"):
            chart, repository_opts = f"{release.repository.rstrip('/')}/{release.chart}", None
        else:
            chart, repository_opts = release.chart, k8s.helm.v3.RepositoryOptsArgs(repo=release.repository)
        resource = k8s.helm.v3.Release(
            f"{release.namespace}/{release.name}",
            name=release.name,
            namespace=release.namespace,
            chart=chart,
            version=release.version,
            repository_opts=repository_opts,
            values=release.values,
            # Helm creates the namespace only when no manifest declares it (then it carries no PSA labels).
            create_namespace=namespace is None,
            atomic=True,
            cleanup_on_fail=True,
            timeout=HELM_TIMEOUT_S,
            opts=self._child_opts([namespace] if namespace is not None else []),
        )
        for group in chart_groups(release.chart):
            self.registry.group_providers.setdefault(group, []).append(resource)
        self.releases[f"{release.namespace}/{release.name}@{release.version}"] = resource
        return resource

    def _declare(self, manifest: dict[str, Any], own_releases: list[pulumi.Resource] = ()) -> pulumi.CustomResource:
        key = object_key(manifest)
        self.registry.claim(key, self.owner)
        depends_on: list[pulumi.Resource] = []
        if key.namespace and key.namespace in self.registry.namespaces:
            depends_on.append(self.registry.namespaces[key.namespace])
        if not is_built_in(key.api_version):
            providers = self.registry.group_providers.get(key.group)
            depends_on.extend(providers if providers else own_releases)
        resource = declare_object(manifest, self._child_opts(depends_on))
        if key.kind == "Namespace" and key.api_version == "v1":
            self.registry.namespaces[key.name] = resource
        if key.kind == "CustomResourceDefinition":
            self.registry.group_providers.setdefault(manifest["spec"]["group"], []).append(resource)
        self.objects[key] = resource
        return resource


def _needs_and_provides(manifests: Any) -> tuple[set[str], set[str]]:
    """Namespaces/API groups a component uses and those it declares (`ns:<name>`, `group:<group>`)."""
    provides: set[str] = set()
    needs: set[str] = set()
    for release in manifests.releases:
        provides |= {f"group:{group}" for group in chart_groups(release.chart)}
        needs.add(f"ns:{release.namespace}")
    for manifest in manifests.manifests:
        key = object_key(manifest)
        if key.kind == "Namespace" and key.api_version == "v1":
            provides.add(f"ns:{key.name}")
        if key.kind == "CustomResourceDefinition":
            provides.add(f"group:{manifest['spec']['group']}")
        if key.namespace:
            needs.add(f"ns:{key.namespace}")
        if not is_built_in(key.api_version):
            needs.add(f"group:{api_group(key.api_version)}")
    return needs - provides, provides


def component_order(components: list[Any]) -> list[Any]:
    """Stable topological order: a component that declares a namespace or API group comes before its users.

    Names nobody declares (kube-system, CRDs installed outside the stack) impose no order. A cycle keeps the
    builder's order for the components involved; their objects then simply do not wait for each other.
    """
    facts = [_needs_and_provides(component) for component in components]
    providers: dict[str, set[int]] = {}
    for index, (_, provides) in enumerate(facts):
        for item in provides:
            providers.setdefault(item, set()).add(index)
    waiting_on = [
        {provider for item in needs for provider in providers.get(item, ()) if provider != index}
        for index, (needs, _) in enumerate(facts)
    ]
    done: list[int] = []
    declared: set[int] = set()
    remaining = list(range(len(components)))
    while remaining:
        ready = next((i for i in remaining if waiting_on[i] <= declared), remaining[0])
        done.append(ready)
        declared.add(ready)
        remaining.remove(ready)
    return [components[index] for index in done]
