"""Shared pieces of every component's manifests: object metadata, namespaces with their network policies.

Every namespace dcforge creates gets the same baseline (Pod Security Admission labels and a default-deny
NetworkPolicy for ingress and egress) from `namespace_bundle`, so the compliance rules hold by construction.
"""

from __future__ import annotations

from typing import Any

from dcforge.spec.models import Environment

# Labels and annotations dcforge writes, defined here once: the builders set them and the compliance rules
# (dcforge.compliance) read them.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "dcforge"
MANAGED_BY = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
PURPOSE_LABEL = "dcforge.io/purpose"
TEAM_LABEL = "dcforge.io/team"
POOL_LABEL = "dcforge.io/pool"
RDMA_LABEL = "dcforge.io/rdma"
STORAGE_PURPOSE_LABEL = "dcforge.io/storage-purpose"
POD_SECURITY_LABEL_PREFIX = "pod-security.kubernetes.io/"
POD_SECURITY_ENFORCE_LABEL = POD_SECURITY_LABEL_PREFIX + "enforce"
# Encryption at rest done below Kubernetes (set up by Ansible or Ceph): the StorageClass says so in this
# annotation and the compliance rule accepts a class without an encryption parameter when it is there.
HOST_ENCRYPTION_ANNOTATION = "dcforge.io/encryption-at-rest"

# Platform namespaces created by the components that install into them.
GPU_OPERATOR_NAMESPACE = "gpu-operator"
KUEUE_NAMESPACE = "kueue-system"
ROOK_NAMESPACE = "rook-ceph"
NFS_CSI_NAMESPACE = "csi-nfs"
CERT_MANAGER_NAMESPACE = "cert-manager"
NETWORK_OPERATOR_NAMESPACE = "nvidia-network-operator"
DEFAULT_ACCEPTANCE_NAMESPACE = "acceptance"
ACCEPTANCE_SERVICE_ACCOUNT = "dcforge-acceptance"
"""The Acceptance component's ServiceAccount: dcforge accept and the workload pods it starts run as it."""
DEFAULT_SERVICE_ACCOUNT = "default"
"""The ServiceAccount Kubernetes creates in every namespace."""

# The API server is not a pod, so it cannot be selected by labels; operators reach it on these ports.
API_SERVER_PORTS = (443, 6443)


def metadata(name: str, namespace: str | None = None, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {**MANAGED_BY, **(labels or {})}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def k8s_version_label(spec: Environment) -> str:
    """Pod Security Admission policy version pinned to the cluster's minor version, e.g. `v1.31`."""
    return f"v{spec.versions.kubernetes}"


def namespace(spec: Environment, name: str, purpose: str, pod_security: str,
              extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    version = k8s_version_label(spec)
    labels = {
        PURPOSE_LABEL: purpose,
        POD_SECURITY_ENFORCE_LABEL: pod_security,
        f"{POD_SECURITY_ENFORCE_LABEL}-version": version,
        # audit and warn at restricted everywhere: shows what a privileged namespace would break if tightened.
        f"{POD_SECURITY_LABEL_PREFIX}audit": "restricted",
        f"{POD_SECURITY_LABEL_PREFIX}audit-version": version,
        f"{POD_SECURITY_LABEL_PREFIX}warn": "restricted",
        f"{POD_SECURITY_LABEL_PREFIX}warn-version": version,
        **(extra_labels or {}),
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(name, labels=labels)}


def network_policy(name: str, namespace_name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, namespace_name),
        "spec": spec,
    }


def namespace_selector(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def default_deny(namespace_name: str) -> dict[str, Any]:
    return network_policy("default-deny-all", namespace_name,
                          {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})


def allow_dns(spec: Environment, namespace_name: str) -> dict[str, Any]:
    dns_peer = {**namespace_selector(spec.network.cluster_dns_namespace),
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    return network_policy("allow-dns", namespace_name, {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": [dns_peer], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}],
    })


def allow_same_namespace(namespace_name: str) -> dict[str, Any]:
    """Pods of one namespace talk freely to each other (NCCL between ranks of a job, operator components)."""
    return network_policy("allow-same-namespace", namespace_name, {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}}]}],
        "egress": [{"to": [{"podSelector": {}}]}],
    })


def allow_api_server(namespace_name: str) -> dict[str, Any]:
    return network_policy("allow-api-server", namespace_name, {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"protocol": "TCP", "port": port} for port in API_SERVER_PORTS]}],
    })


def allow_webhook(namespace_name: str, port: int) -> dict[str, Any]:
    """Admission webhooks are called by the API server, whose source address is a node, not a pod."""
    return network_policy("allow-webhook", namespace_name, {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": port}]}],
    })


def platform_namespace(spec: Environment, name: str, pod_security: str,
                       webhook_port: int | None = None) -> list[dict[str, Any]]:
    """An operator's namespace: baseline policies plus the API server access every operator needs."""
    objects = namespace_bundle(spec, name, "platform", pod_security)
    objects.append(allow_same_namespace(name))
    objects.append(allow_api_server(name))
    if webhook_port is not None:
        objects.append(allow_webhook(name, webhook_port))
    return objects


def default_service_account(namespace_name: str) -> dict[str, Any]:
    """The `default` ServiceAccount with its token not automounted.

    Kubernetes creates `default` in every namespace, and every pod that names no other account runs as it with an
    API token mounted (CIS 5.1.6, rule DCF-SA-001). Declaring it makes the stack own that setting; it exists before
    the stack touches it, so the stacks patch it (server-side apply) instead of creating it.
    """
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(DEFAULT_SERVICE_ACCOUNT, namespace_name),
            "automountServiceAccountToken": False}


def namespace_bundle(spec: Environment, name: str, purpose: str, pod_security: str,
                     extra_labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Namespace + its default ServiceAccount without a token + default-deny + DNS egress: the minimum every
    namespace gets."""
    return [namespace(spec, name, purpose, pod_security, extra_labels), default_service_account(name),
            default_deny(name), allow_dns(spec, name)]


def acceptance_namespace(spec: Environment) -> str:
    for ns in spec.network.namespaces:
        if ns.purpose == "acceptance":
            return ns.name
    return DEFAULT_ACCEPTANCE_NAMESPACE


def namespaces_with_purpose(spec: Environment, purpose: str) -> list[str]:
    return [ns.name for ns in spec.network.namespaces if ns.purpose == purpose]


def gateway_namespaces(spec: Environment) -> list[str]:
    """Where inference is exposed and TLS terminates: the declared gateway namespaces, else network.gatewayNamespace
    (which ClusterNetwork then creates)."""
    return namespaces_with_purpose(spec, "gateway") or [spec.network.gateway_namespace]
