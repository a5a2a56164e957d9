"""The generic manifest -> pulumi-kubernetes mapping and the component base, on small hand-written manifests."""

from __future__ import annotations

import sys

import pytest

from dcforge.paths import STACKS_DIR

sys.path.insert(0, str(STACKS_DIR))

import pulumi_kubernetes as k8s  # noqa: E402

from components import COMPONENTS, declare_platform  # noqa: E402
from components.base import ManifestComponent, StackRegistry, component_order  # noqa: E402
from components.objects import (  # noqa: E402
    ManifestError,
    ObjectKey,
    creation_order,
    declare_object,
    resource_arguments,
    resource_class,
    resource_name,
    typed_class,
)
from tests.pulumi_mocks import run_under_mocks  # noqa: E402
from dcforge.manifests import ComponentManifests, HelmRelease  # noqa: E402


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}


DENY_ALL = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-all", "namespace": "training"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
SERVICE_ACCOUNT = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "workload", "namespace": "training"},
                   "automountServiceAccountToken": False}
CLUSTER_QUEUE = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ClusterQueue", "metadata": {"name": "train"},
                 "spec": {"namespaceSelector": {}, "resourceGroups": [{
                     "coveredResources": ["nvidia.com/gpu"],
                     "flavors": [{"name": "train", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 16}]}]}]}}
LOCAL_QUEUE = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue",
               "metadata": {"name": "train", "namespace": "training"}, "spec": {"clusterQueue": "train"}}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-01", "labels": {"dcforge.io/pool": "train"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}}
SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": "training"},
          "type": "Opaque", "stringData": {"token": "hf_dummy"}}
KUEUE = HelmRelease(name="kueue", namespace="kueue-system", chart="kueue", version="0.10.4",
                    repository="oci://registry.k8s.io/kueue/charts", values={"controllerManager": {"replicas": 2}})
CERT_MANAGER = HelmRelease(name="cert-manager", namespace="cert-manager", chart="cert-manager", version="v1.16.2",
                           repository="https://charts.jetstack.io", values={"crds": {"enabled": True}})


def floats_to_ints(value):
    """Mocks send numbers back as floats; compare in the manifest's own integer form."""
    if isinstance(value, dict):
        return {k: floats_to_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [floats_to_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@pytest.mark.parametrize(("api_version", "kind", "name", "expected"), [
    ("v1", "Namespace", "training", k8s.core.v1.Namespace),
    ("v1", "ServiceAccount", "acceptance-runner", k8s.core.v1.ServiceAccount),
    # exists in every namespace before the stack runs: patched, never created
    ("v1", "ServiceAccount", "default", k8s.core.v1.ServiceAccountPatch),
    ("networking.k8s.io/v1", "NetworkPolicy", "default-deny-all", k8s.networking.v1.NetworkPolicy),
    ("rbac.authorization.k8s.io/v1", "Role", "r", k8s.rbac.v1.Role),
    ("storage.k8s.io/v1", "StorageClass", "s", k8s.storage.v1.StorageClass),
    ("scheduling.k8s.io/v1", "PriorityClass", "p", k8s.scheduling.v1.PriorityClass),
    ("policy/v1", "PodDisruptionBudget", "b", k8s.policy.v1.PodDisruptionBudget),
    ("apps/v1", "Deployment", "d", k8s.apps.v1.Deployment),
    ("v1", "Node", "gpu-node-1", k8s.core.v1.NodePatch),
    ("kueue.x-k8s.io/v1beta1", "ClusterQueue", "q", None),
    ("ceph.rook.io/v1", "CephCluster", "c", None),
    ("cert-manager.io/v1", "ClusterIssuer", "i", None),
])
def test_objects_map_to_typed_classes_patches_or_custom_resources(api_version, kind, name, expected):
    assert resource_class(ObjectKey(api_version, kind, "", name)) is expected


def test_an_unknown_built_in_kind_is_an_error():
    with pytest.raises(ManifestError, match="no class for built-in"):
        typed_class("apps/v1", "Deploymnet")


def test_top_level_fields_become_snake_case_arguments_and_nested_ones_keep_wire_form():
    assert resource_arguments(SERVICE_ACCOUNT) == {"metadata": SERVICE_ACCOUNT["metadata"],
                                                   "automount_service_account_token": False}
    assert resource_arguments(DENY_ALL)["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert resource_arguments(CLUSTER_QUEUE)["api_version"] == "kueue.x-k8s.io/v1beta1"


def test_fields_the_class_does_not_have_are_refused():
    with pytest.raises(ManifestError, match="no field"):
        resource_arguments({**SERVICE_ACCOUNT, "automountToken": False})
    with pytest.raises(ManifestError, match="only metadata and spec"):
        resource_arguments({**CLUSTER_QUEUE, "status": {}})
    with pytest.raises(ManifestError, match="lacks apiVersion"):
        resource_arguments({"kind": "Namespace", "metadata": {"name": "x"}})


def test_resource_names_are_namespace_qualified():
    assert resource_name(DENY_ALL) == "training/default-deny-all"
    assert resource_name(CLUSTER_QUEUE) == "train"


def test_every_manifest_reaches_the_engine_in_its_own_wire_form():
    manifests = [namespace("training"), DENY_ALL, SERVICE_ACCOUNT, CLUSTER_QUEUE, LOCAL_QUEUE, NODE]
    registered = run_under_mocks(lambda: [declare_object(m) for m in manifests])
    by_name = {(r.type.rsplit(":", 1)[1], r.name): r for r in registered}
    assert {key[0] for key in by_name} == {"Namespace", "NetworkPolicy", "ServiceAccount", "ClusterQueue",
                                           "LocalQueue", "NodePatch"}
    for manifest in manifests:
        kind = "NodePatch" if manifest["kind"] == "Node" else manifest["kind"]
        assert floats_to_ints(by_name[(kind, resource_name(manifest))].inputs) == manifest


def test_secret_payloads_are_pulumi_secrets():
    [secret] = run_under_mocks(lambda: declare_object(SECRET))
    assert secret.secret_inputs == {"stringData"}
    assert secret.inputs["stringData"] == {"token": "hf_dummy"}
    assert {"stringData", "data"} <= set(secret.additional_secret_outputs)


def test_creation_order_puts_namespaces_first_and_custom_resources_last_keeping_builder_order():
    flavor = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ResourceFlavor", "metadata": {"name": "train"}}
    ordered = creation_order([flavor, CLUSTER_QUEUE, DENY_ALL, SERVICE_ACCOUNT, namespace("training")])
    assert [m["kind"] for m in ordered] == ["Namespace", "ServiceAccount", "NetworkPolicy", "ResourceFlavor",
                                            "ClusterQueue"]


def network(*names: str) -> ComponentManifests:
    return ComponentManifests("ClusterNetwork", "platform", [namespace(n) for n in names])


def test_components_that_use_a_namespace_or_api_group_come_after_the_one_declaring_it():
    pool = ComponentManifests("GpuNodePool", "train", [CLUSTER_QUEUE, LOCAL_QUEUE])
    operator = ComponentManifests("GpuOperator", "platform", [namespace("kueue-system")], [KUEUE])
    ordered = component_order([pool, operator, network("training")])
    assert [c.component for c in ordered] == ["GpuOperator", "ClusterNetwork", "GpuNodePool"]
    # Names declared by nobody (pre-existing namespaces) impose no order.
    loose = ComponentManifests("Acceptance", "acceptance", [{**SERVICE_ACCOUNT, "metadata": {
        "name": "x", "namespace": "kube-system"}}])
    assert component_order([loose, network("training")])[0] is loose


def test_a_cycle_keeps_the_builder_order():
    first = ComponentManifests("ClusterNetwork", "platform", [namespace("a"), {**DENY_ALL, "metadata": {
        "name": "p", "namespace": "b"}}])
    second = ComponentManifests("SecurityBaseline", "platform", [namespace("b"), {**DENY_ALL, "metadata": {
        "name": "p", "namespace": "a"}}])
    assert component_order([first, second]) == [first, second]


def short(urn: str) -> str:
    return urn.rsplit("::", 1)[1]


def test_children_are_parented_and_wait_for_their_namespace_and_the_release_serving_their_api_group():
    operator = ComponentManifests("GpuOperator", "platform", [namespace("kueue-system")], [KUEUE])
    pool = ComponentManifests("GpuNodePool", "train", [NODE, CLUSTER_QUEUE, LOCAL_QUEUE])
    security = ComponentManifests("SecurityBaseline", "platform", [
        {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "ca"},
         "spec": {"selfSigned": {}}}], [CERT_MANAGER])
    registered = run_under_mocks(lambda: declare_platform([pool, security, operator, network("training")]))
    by_name = {(r.type, r.name): r for r in registered}
    components = {r.urn: r for r in registered if r.type.startswith("dcforge:index:")}
    assert {r.type for r in components.values()} == {"dcforge:index:GpuNodePool", "dcforge:index:GpuOperator",
                                                     "dcforge:index:SecurityBaseline",
                                                     "dcforge:index:ClusterNetwork"}
    for resource in registered:
        if resource.type.startswith("kubernetes:"):
            assert resource.parent in components, f"{resource.name} is not parented to a component"
    local_queue = by_name[("kubernetes:kueue.x-k8s.io/v1beta1:LocalQueue", "training/train")]
    assert components[local_queue.parent].type == "dcforge:index:GpuNodePool"
    assert sorted(short(d) for d in local_queue.dependencies) == ["kueue-system/kueue", "training"]
    kueue = by_name[("kubernetes:helm.sh/v3:Release", "kueue-system/kueue")]
    assert [short(d) for d in kueue.dependencies] == ["kueue-system"]
    assert kueue.inputs["createNamespace"] is False
    assert kueue.inputs["chart"] == "oci://registry.k8s.io/kueue/charts/kueue"
    assert kueue.inputs["values"] == {"controllerManager": {"replicas": 2.0}}
    cert_manager = by_name[("kubernetes:helm.sh/v3:Release", "cert-manager/cert-manager")]
    assert cert_manager.inputs["createNamespace"] is True  # nobody declares its namespace
    assert cert_manager.inputs["repositoryOpts"] == {"repo": "https://charts.jetstack.io"}
    assert cert_manager.inputs["version"] == "v1.16.2"
    issuer = by_name[("kubernetes:cert-manager.io/v1:ClusterIssuer", "ca")]
    assert [short(d) for d in issuer.dependencies] == ["cert-manager/cert-manager"]
    node = by_name[("kubernetes:core/v1:NodePatch", "gpu-01")]
    assert node.dependencies == []


def test_an_object_declared_by_two_components_is_an_error():
    twice = [network("training"), ComponentManifests("SecurityBaseline", "platform", [namespace("training")])]
    with pytest.raises(ManifestError, match="declared by both ClusterNetwork/platform and SecurityBaseline"):
        run_under_mocks(lambda: declare_platform(twice))


def test_component_summary_lists_what_it_declared():
    components = []

    def program():
        components.extend(declare_platform([
            ComponentManifests("GpuNodePool", "train", [NODE, CLUSTER_QUEUE]),
            ComponentManifests("GpuOperator", "platform", [namespace("kueue-system")], [KUEUE])]))

    run_under_mocks(program)
    pool = next(c for c in components if c.TYPE_TOKEN == "dcforge:index:GpuNodePool")
    summary = pool.summary()
    assert summary["patchedNodes"] == ["gpu-01"]
    assert summary["clusterQueues"] == ["train"]
    assert summary["objects"] == ["Node gpu-01 (v1)", "ClusterQueue train (kueue.x-k8s.io/v1beta1)"]
    operator = next(c for c in components if c.TYPE_TOKEN == "dcforge:index:GpuOperator")
    assert operator.summary()["releases"] == ["kueue-system/kueue@0.10.4"]


def test_type_tokens_and_a_component_refuses_foreign_manifests():
    assert {cls.TYPE_TOKEN for cls in COMPONENTS.values()} == {
        f"dcforge:index:{name}" for name in ("GpuNodePool", "GpuOperator", "DistributedStorage", "ClusterNetwork",
                                            "SecurityBaseline", "Acceptance")}
    with pytest.raises(ManifestError, match="GpuOperator got manifests of ClusterNetwork"):
        run_under_mocks(lambda: COMPONENTS["GpuOperator"](network("training"), StackRegistry()))
    assert issubclass(COMPONENTS["Acceptance"], ManifestComponent)
