"""One generic mapping from a Kubernetes manifest dict (wire form) to the matching pulumi-kubernetes resource.

Built-in kinds (Namespace, NetworkPolicy, Role, StorageClass, ...) become their typed classes, so that Pulumi
knows their schema (diffs, await logic, secret fields); every other API group (Kueue, Rook-Ceph, cert-manager,
NetworkAttachmentDefinition, ...) becomes a `CustomResource`. Objects that exist before the stack runs are never
created: bare-metal nodes get their labels and taints with a server-side-apply `NodePatch`, and the `default`
ServiceAccount Kubernetes puts in every namespace gets `automountServiceAccountToken: false` with a
`ServiceAccountPatch`.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

# API groups served by Kubernetes itself. pulumi-kubernetes names its modules after the first label of the group
# (`rbac.authorization.k8s.io` -> `rbac`, `networking.k8s.io` -> `networking`, core `v1` -> `core`).
_BUILT_IN_GROUP_SUFFIX = ".k8s.io"
_BUILT_IN_SHORT_GROUPS = {"", "apps", "batch", "policy", "autoscaling"}
# Objects that exist before the stack runs and are patched, never created or deleted: (apiVersion, kind) -> the
# patch class and the object names it applies to (None: every object of the kind).
PATCHED_OBJECTS: dict[tuple[str, str], tuple[type[pulumi.CustomResource], frozenset[str] | None]] = {
    ("v1", "Node"): (k8s.core.v1.NodePatch, None),
    ("v1", "ServiceAccount"): (k8s.core.v1.ServiceAccountPatch, frozenset({"default"})),
}
# Fields that live beside apiVersion/kind at the top level and are passed through as typed-class arguments.
_IDENTITY_KEYS = {"apiVersion", "kind"}
# Secret payload fields: the values are wrapped in Pulumi secrets so they are encrypted in the state file.
SECRET_FIELDS = ("stringData", "data")


class ManifestError(ValueError):
    """A manifest dict the mapping cannot turn into a resource (a bug in the manifest builder, not user input)."""


@dataclass(frozen=True)
class ObjectKey:
    """Cluster-wide identity of one Kubernetes object."""

    api_version: str
    kind: str
    namespace: str
    """Empty for cluster-scoped objects."""
    name: str

    @property
    def group(self) -> str:
        return api_group(self.api_version)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} ({self.api_version})"


def api_group(api_version: str) -> str:
    """`rbac.authorization.k8s.io/v1` -> `rbac.authorization.k8s.io`; core `v1` -> ``."""
    return api_version.rpartition("/")[0]


def object_key(manifest: dict[str, Any]) -> ObjectKey:
    try:
        api_version = manifest["apiVersion"]
        kind = manifest["kind"]
        name = manifest["metadata"]["name"]
    except (KeyError, TypeError):
        raise ManifestError(f"manifest lacks apiVersion, kind or metadata.name: {str(manifest)[:200]}") from None
    return ObjectKey(api_version, kind, manifest["metadata"].get("namespace", "") or "", name)


def resource_name(manifest: dict[str, Any]) -> str:
    """Pulumi logical name: `namespace/name` for namespaced objects, `name` otherwise.

    Unique within a resource type because the Kubernetes identity is; the Pulumi type already carries the kind.
    The object's own `metadata.name` is always set, so Pulumi never appends an auto-naming suffix.
    """
    key = object_key(manifest)
    return f"{key.namespace}/{key.name}" if key.namespace else key.name


def is_built_in(api_version: str) -> bool:
    group = api_group(api_version)
    return group in _BUILT_IN_SHORT_GROUPS or group.endswith(_BUILT_IN_GROUP_SUFFIX)


def resource_class(key: ObjectKey) -> type[pulumi.CustomResource] | None:
    """The class that declares this object: its patch class when it exists before the stack runs, else the typed
    class of its kind, else None (a custom resource)."""
    patch = PATCHED_OBJECTS.get((key.api_version, key.kind))
    if patch is not None and (patch[1] is None or key.name in patch[1]):
        return patch[0]
    return typed_class(key.api_version, key.kind)


@functools.lru_cache(maxsize=None)
def typed_class(api_version: str, kind: str) -> type[pulumi.CustomResource] | None:
    """The pulumi-kubernetes class of a built-in kind, or None for a custom resource."""
    if not is_built_in(api_version):
        return None
    group, _, version = api_version.rpartition("/")
    module_name = group.split(".", 1)[0] if group else "core"
    module = getattr(getattr(k8s, module_name, None), version, None)
    cls = getattr(module, kind, None)
    if cls is None:
        raise ManifestError(f"pulumi-kubernetes has no class for built-in {api_version} {kind}")
    return cls


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


@functools.lru_cache(maxsize=None)
def _accepted_arguments(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls._internal_init).parameters) - {"__self__", "resource_name", "opts"}


def resource_arguments(manifest: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the typed class: top-level fields in snake_case, nested values kept in wire form.

    Nested dicts stay camelCase on purpose: pulumi-kubernetes sends them to the engine untouched, which is the
    form the API server expects (checked under mocks in the tests).
    """
    key = object_key(manifest)
    cls = resource_class(key)
    fields = {name: value for name, value in manifest.items() if name not in _IDENTITY_KEYS}
    if cls is None:
        unknown = set(fields) - {"metadata", "spec"}
        if unknown:
            raise ManifestError(f"{key}: custom resources carry only metadata and spec, not {sorted(unknown)}")
        return {"api_version": key.api_version, "kind": key.kind, **fields}
    arguments = {_snake(name): value for name, value in fields.items()}
    unknown = set(arguments) - _accepted_arguments(cls)
    if unknown:
        raise ManifestError(f"{key}: {cls.__name__} has no field(s) {sorted(unknown)}")
    if key.kind == "Secret":
        # Inputs wrapped as secrets are encrypted in the state file; the typed Secret marks its outputs secret too.
        for field in SECRET_FIELDS:
            if _snake(field) in arguments:
                arguments[_snake(field)] = pulumi.Output.secret(arguments[_snake(field)])
    return arguments


def declare_object(manifest: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> pulumi.CustomResource:
    """Create the Pulumi resource of one manifest dict (the single mapping every component uses)."""
    key = object_key(manifest)
    cls = resource_class(key)
    arguments = resource_arguments(manifest)
    if cls is None:
        return k8s.apiextensions.CustomResource(resource_name(manifest), opts=opts, **arguments)
    return cls(resource_name(manifest), opts=opts, **arguments)


# Order of creation inside one component when the builder's list is not already ordered: what others need first.
_KIND_RANK = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    "PriorityClass": 2,
    "StorageClass": 2,
    "ClusterRole": 3,
    "ServiceAccount": 4,
    "Role": 4,
    "ClusterRoleBinding": 5,
    "RoleBinding": 5,
}
_DEFAULT_RANK = 6


def creation_order(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stable sort: namespaces, CRDs, classes and RBAC subjects before what uses them; custom resources last.

    Stable, so the builder's own dependency order (e.g. ResourceFlavor before ClusterQueue) is kept within a rank.
    """

    def rank(manifest: dict[str, Any]) -> int:
        key = object_key(manifest)
        if not is_built_in(key.api_version):
            return _DEFAULT_RANK + 1
        return _KIND_RANK.get(key.kind, _DEFAULT_RANK)

    return sorted(manifests, key=rank)
