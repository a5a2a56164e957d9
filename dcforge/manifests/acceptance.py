"""Acceptance: the namespace, ServiceAccount and least-privilege roles `dcforge accept` needs on a cluster."""

from __future__ import annotations

from typing import Any

from dcforge.executors.kubernetes_access import (EXECUTOR_API_ACCESS, NODE_EVENT_ACCESS, NODE_HEALTH_API_ACCESS,
                                                   NODE_LIST_ACCESS, REMEDIATION_API_ACCESS, rbac_rules)
from dcforge.manifests.components import ComponentManifests
from dcforge.manifests.common import (
    ACCEPTANCE_SERVICE_ACCOUNT,
    acceptance_namespace,
    allow_api_server,
    allow_same_namespace,
    gateway_namespaces,
    metadata,
    namespace_bundle,
    namespace_selector,
    namespaces_with_purpose,
    network_policy,
)
from dcforge.manifests.monitoring import acceptance_alert_rules, scrape_monitors
from dcforge.manifests.scheduled_acceptance import scheduled_acceptance
from dcforge.manifests.security_baseline import RBAC_API
from dcforge.spec.models import Environment

HARNESS_NAME = ACCEPTANCE_SERVICE_ACCOUNT
NODE_EVENT_NAMESPACE = "default"
"""Where the kubelet and dcforge record Events about nodes (dcforge/node_health.py EVENT_NAMESPACE)."""


def harness_role(namespace_name: str) -> dict[str, Any]:
    """Runs the workloads and reads their logs, in its own namespace only: exactly the API access the kubernetes
    executor uses (`EXECUTOR_API_ACCESS`, defined once in dcforge/executors/kubernetes_access.py)."""
    return {"apiVersion": RBAC_API, "kind": "Role", "metadata": metadata(HARNESS_NAME, namespace_name),
            "rules": rbac_rules(EXECUTOR_API_ACCESS)}


def harness_cluster_reader() -> dict[str, Any]:
    """Cluster-wide reads the checks need: GPUs per node and the objects the compliance check judges (no Secrets)."""
    return {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": metadata(f"{HARNESS_NAME}-reader"), "rules": [
        {"apiGroups": [""], "resources": ["nodes", "namespaces", "services", "serviceaccounts", "pods"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "list"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "list"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list"]},
        {"apiGroups": ["rbac.authorization.k8s.io"],
         "resources": ["roles", "rolebindings", "clusterroles", "clusterrolebindings"], "verbs": ["get", "list"]},
    ]}


def harness_node_lister() -> dict[str, Any]:
    """Pinning the pairs of `slow_node` and `network` to named nodes: exactly NODE_LIST_ACCESS, cluster-wide."""
    return {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": metadata(f"{HARNESS_NAME}-node-lister"),
            "rules": rbac_rules(NODE_LIST_ACCESS)}


def harness_node_tainter() -> dict[str, Any]:
    """`dcforge accept --taint-failed`: exactly REMEDIATION_API_ACCESS, cluster-wide (nodes are cluster-scoped)."""
    return {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": metadata(f"{HARNESS_NAME}-node-tainter"),
            "rules": rbac_rules(REMEDIATION_API_ACCESS)}


def harness_node_marker(namespace_name: str) -> list[dict[str, Any]]:
    """`dcforge accept --mark-nodes`: NODE_HEALTH_API_ACCESS cluster-wide (nodes are cluster-scoped) and
    NODE_EVENT_ACCESS in `default` only (where the Events about nodes are kept), each with its binding."""
    name = f"{HARNESS_NAME}-node-marker"
    return [
        {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": metadata(name),
         "rules": rbac_rules(NODE_HEALTH_API_ACCESS)},
        binding("ClusterRoleBinding", name, None, "ClusterRole", namespace_name),
        {"apiVersion": RBAC_API, "kind": "Role", "metadata": metadata(name, NODE_EVENT_NAMESPACE),
         "rules": rbac_rules(NODE_EVENT_ACCESS)},
        binding("RoleBinding", name, NODE_EVENT_NAMESPACE, "Role", namespace_name),
    ]


def binding(kind: str, name: str, binding_namespace: str | None, role_kind: str,
            harness_namespace: str) -> dict[str, Any]:
    return {"apiVersion": RBAC_API, "kind": kind, "metadata": metadata(name, binding_namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": HARNESS_NAME, "namespace": harness_namespace}]}


def acceptance(spec: Environment) -> ComponentManifests:
    name = acceptance_namespace(spec)
    pod_security = next((ns.pod_security for ns in spec.network.namespaces if ns.name == name), "restricted")
    targets = namespaces_with_purpose(spec, "inference") + gateway_namespaces(spec)
    manifests = [
        *namespace_bundle(spec, name, "acceptance", pod_security),
        allow_same_namespace(name),  # the harness's training/all-reduce jobs talk rank to rank
        allow_api_server(name),
        network_policy("allow-to-inference", name, {
            "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [namespace_selector(ns) for ns in targets]}]}),
        # Token not mounted by default (CIS 5.1.6): the harness's own pod opts in with
        # automountServiceAccountToken: true in its pod spec; the benchmark jobs it starts do not.
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(HARNESS_NAME, name),
         "automountServiceAccountToken": False},
        harness_role(name),
        binding("RoleBinding", HARNESS_NAME, name, "Role", name),
        harness_cluster_reader(),
        binding("ClusterRoleBinding", f"{HARNESS_NAME}-reader", None, "ClusterRole", name),
        harness_node_lister(),
        binding("ClusterRoleBinding", f"{HARNESS_NAME}-node-lister", None, "ClusterRole", name),
        *([harness_node_tainter(), binding("ClusterRoleBinding", f"{HARNESS_NAME}-node-tainter", None, "ClusterRole",
                                           name)] if spec.acceptance.allow_node_taints else []),
        *(harness_node_marker(name) if spec.acceptance.allow_node_conditions else []),
        *scheduled_acceptance(spec, name),
        *acceptance_alert_rules(spec),
        # What the `monitoring` check proves reports: declared only where the Prometheus operator's CRDs are.
        *scrape_monitors(spec),
    ]
    return ComponentManifests(component="Acceptance", name="acceptance", manifests=manifests)
