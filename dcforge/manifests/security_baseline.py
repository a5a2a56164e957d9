"""SecurityBaseline: cert-manager and the CA issuer, inference certificates, RBAC roles without wildcards, team
bindings, workload ServiceAccounts, per-team ResourceQuota and LimitRange."""

from __future__ import annotations

import re
from typing import Any

from dcforge.manifests.components import ComponentManifests, HelmRelease
from dcforge.manifests.common import CERT_MANAGER_NAMESPACE, gateway_namespaces, metadata, platform_namespace
from dcforge.spec.models import Environment, Team

CERT_MANAGER_API = "cert-manager.io/v1"
CERT_MANAGER_REPOSITORY = "https://charts.jetstack.io"
CERT_MANAGER_WEBHOOK_PORT = 10250
SELF_SIGNED_ISSUER = "dcforge-selfsigned"
ROOT_CA = "dcforge-root-ca"
CA_ISSUER = "dcforge-ca"
WORKLOAD_SERVICE_ACCOUNT = "workload"
RBAC_API = "rbac.authorization.k8s.io/v1"

READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]
# (apiGroups, resources) each role works with. Explicit lists, never "*": a wildcard silently grants resources
# that CRDs add later. No role reads Secrets cluster-wide (CIS 5.1.2); none may escalate, bind or impersonate.
WORKLOAD_RESOURCES = [
    ([""], ["pods", "pods/log", "services", "configmaps", "persistentvolumeclaims", "events", "serviceaccounts"]),
    (["apps"], ["deployments", "statefulsets", "replicasets"]),
    (["batch"], ["jobs", "cronjobs"]),
    (["kueue.x-k8s.io"], ["localqueues", "workloads"]),
    (["policy"], ["poddisruptionbudgets"]),
    (["autoscaling"], ["horizontalpodautoscalers"]),
]
PLATFORM_RESOURCES = [
    *WORKLOAD_RESOURCES,
    ([""], ["namespaces", "nodes", "persistentvolumes", "resourcequotas", "limitranges"]),
    (["networking.k8s.io"], ["networkpolicies", "ingresses"]),
    (["storage.k8s.io"], ["storageclasses"]),
    (["scheduling.k8s.io"], ["priorityclasses"]),
    (["rbac.authorization.k8s.io"], ["roles", "rolebindings", "clusterroles", "clusterrolebindings"]),
    (["kueue.x-k8s.io"], ["clusterqueues", "resourceflavors"]),
    (["ceph.rook.io"], ["cephclusters", "cephblockpools", "cephfilesystems"]),
    (["cert-manager.io"], ["certificates", "clusterissuers", "issuers"]),
    (["k8s.cni.cncf.io"], ["network-attachment-definitions"]),
]


def rules(resources: list[tuple[list[str], list[str]]], verbs: list[str]) -> list[dict[str, Any]]:
    return [{"apiGroups": groups, "resources": names, "verbs": list(verbs)} for groups, names in resources]


def cluster_role(name: str, role_rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": metadata(name), "rules": role_rules}


def group_subjects(groups: list[str]) -> list[dict[str, str]]:
    return [{"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"} for group in groups]


def roles() -> list[dict[str, Any]]:
    return [
        cluster_role("platform-admin", rules(PLATFORM_RESOURCES, READ + WRITE)),
        # Engineers manage workloads in their team namespace and may create (not read back) Secrets there.
        cluster_role("ml-engineer", rules(WORKLOAD_RESOURCES, READ + WRITE)
                     + [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "delete"]},
                        {"apiGroups": [""], "resources": ["pods/exec", "pods/portforward"], "verbs": ["create"]}]),
        cluster_role("ml-viewer", rules(WORKLOAD_RESOURCES, READ)),
    ]


def team_bindings(team: Team) -> list[dict[str, Any]]:
    return [
        {"apiVersion": RBAC_API, "kind": "RoleBinding",
         "metadata": metadata(f"{team.name}-{role}", team.namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": group_subjects(groups)}
        for role, groups in sorted(team.groups.items()) if groups
    ]


def service_account(namespace_name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(WORKLOAD_SERVICE_ACCOUNT, namespace_name),
            "automountServiceAccountToken": False}


def team_quota(spec: Environment, team: Team) -> dict[str, Any]:
    hard: dict[str, Any] = {
        "requests.cpu": str(team.cpu_quota), "limits.cpu": str(team.cpu_quota),
        "requests.memory": f"{team.memory_quota_gi}Gi", "limits.memory": f"{team.memory_quota_gi}Gi",
        "requests.nvidia.com/gpu": str(sum(team.gpu_quota.values())),
    }
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": metadata(f"{team.name}-quota", team.namespace),
            "spec": {"hard": hard}}


def team_limit_range(team: Team) -> dict[str, Any]:
    """Defaults for containers that omit requests/limits, so the quota can account for them."""
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": metadata(f"{team.name}-limits", team.namespace),
            "spec": {"limits": [{"type": "Container",
                                 "default": {"cpu": "2", "memory": "8Gi"},
                                 "defaultRequest": {"cpu": "500m", "memory": "2Gi"}}]}}


def issuers(spec: Environment) -> list[dict[str, Any]]:
    issuer = spec.security.tls_issuer
    if issuer.kind == "acme":
        return [{"apiVersion": CERT_MANAGER_API, "kind": "ClusterIssuer", "metadata": metadata(CA_ISSUER),
                 "spec": {"acme": {"server": issuer.acme_server, "email": issuer.acme_email,
                                   "privateKeySecretRef": {"name": f"{CA_ISSUER}-account-key"},
                                   "solvers": [{"http01": {"ingress": {}}}]}}}]
    ca_secret = issuer.ca_secret_name if issuer.kind == "ca-secret" else ROOT_CA
    objects = []
    if issuer.kind == "self-signed-ca":
        objects += [
            {"apiVersion": CERT_MANAGER_API, "kind": "ClusterIssuer", "metadata": metadata(SELF_SIGNED_ISSUER),
             "spec": {"selfSigned": {}}},
            {"apiVersion": CERT_MANAGER_API, "kind": "Certificate", "metadata": metadata(ROOT_CA, CERT_MANAGER_NAMESPACE),
             "spec": {"isCA": True, "commonName": f"dcforge {spec.name} root CA", "secretName": ROOT_CA,
                      "duration": "87600h", "privateKey": {"algorithm": "ECDSA", "size": 256},
                      "issuerRef": {"name": SELF_SIGNED_ISSUER, "kind": "ClusterIssuer",
                                    "group": "cert-manager.io"}}},
        ]
    objects.append({"apiVersion": CERT_MANAGER_API, "kind": "ClusterIssuer", "metadata": metadata(CA_ISSUER),
                    "spec": {"ca": {"secretName": ca_secret}}})
    return objects


def certificate_name(hostname: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", hostname.lower()).strip("-")[:52] + "-tls"


def inference_certificates(spec: Environment) -> list[dict[str, Any]]:
    """Certificates live where TLS terminates: the gateway namespace."""
    gateway = gateway_namespaces(spec)[0]
    return [
        {"apiVersion": CERT_MANAGER_API, "kind": "Certificate", "metadata": metadata(certificate_name(host), gateway),
         "spec": {"secretName": certificate_name(host), "dnsNames": [host], "duration": "2160h",
                  "renewBefore": "360h", "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                  "issuerRef": {"name": CA_ISSUER, "kind": "ClusterIssuer", "group": "cert-manager.io"}}}
        for host in spec.security.inference_hostnames
    ]


def security_baseline(spec: Environment) -> ComponentManifests:
    release = HelmRelease(name="cert-manager", namespace=CERT_MANAGER_NAMESPACE, chart="cert-manager",
                          version=spec.security.cert_manager_chart_version, repository=CERT_MANAGER_REPOSITORY,
                          values={"crds": {"enabled": True}, "replicaCount": 2,
                                  "podDisruptionBudget": {"enabled": True},
                                  "webhook": {"replicaCount": 2}, "prometheus": {"enabled": False}})
    manifests = [*platform_namespace(spec, CERT_MANAGER_NAMESPACE, "restricted",
                                     webhook_port=CERT_MANAGER_WEBHOOK_PORT), *roles()]
    manifests.append({"apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": metadata("platform-admin"),
                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "platform-admin"},
                      "subjects": group_subjects(spec.security.platform_admin_groups)})
    workload_namespaces = [ns.name for ns in spec.network.namespaces if ns.purpose in ("training", "inference")]
    manifests += [service_account(ns) for ns in workload_namespaces]
    for team in spec.security.teams:
        manifests += [service_account(team.namespace), *team_bindings(team), team_quota(spec, team),
                      team_limit_range(team)]
    manifests += issuers(spec)
    manifests += inference_certificates(spec)
    return ComponentManifests(component="SecurityBaseline", name="platform", manifests=manifests, releases=[release])
