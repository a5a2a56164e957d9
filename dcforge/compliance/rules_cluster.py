"""RBAC, namespace, network, storage rules and the rules that need the whole set of manifests."""

from __future__ import annotations

from dcforge.compliance.model import Violation, resource_id
from dcforge.compliance.registry import Manifest, dig, labels_of, namespace_of, pod_spec, resource_rule, set_rule
from dcforge.manifests.common import (
    HOST_ENCRYPTION_ANNOTATION,
    POD_SECURITY_ENFORCE_LABEL,
    PURPOSE_LABEL,
    TEAM_LABEL,
)

ROLE_KINDS = {"Role", "ClusterRole"}
BINDING_KINDS = {"RoleBinding", "ClusterRoleBinding"}
DANGEROUS_VERBS = {"escalate", "bind", "impersonate"}
SECRET_READ_VERBS = {"get", "list", "watch", "*"}
ANONYMOUS_SUBJECTS = {"system:anonymous", "system:unauthenticated"}
PSA_LEVELS = {"restricted", "baseline", "privileged"}
# Provisioners whose StorageClass can ask for per-volume encryption, and the parameter that does.
ENCRYPTION_PARAMETERS = {
    "rook-ceph.rbd.csi.ceph.com": "encrypted",
    "rook-ceph.cephfs.csi.ceph.com": "encrypted",
    "rbd.csi.ceph.com": "encrypted",
    "cephfs.csi.ceph.com": "encrypted",
    "ebs.csi.aws.com": "encrypted",
    "pd.csi.storage.gke.io": "disk-encryption-kms-key",
}


@resource_rule("DCF-RBAC-001", "RBAC rules use no wildcards", "high", "CIS 5.1.3; Checkov CKV_K8S_49")
def no_wildcards(manifest):
    if manifest.get("kind") in ROLE_KINDS:
        for index, rule in enumerate(manifest.get("rules") or []):
            for field in ("apiGroups", "resources", "verbs", "nonResourceURLs"):
                if "*" in (rule.get(field) or []):
                    yield f"rules[{index}].{field} contains '*'"


@resource_rule("DCF-RBAC-002", "No escalate, bind or impersonate verbs", "high",
               "CIS 5.1.8; Checkov CKV_K8S_155, CKV_K8S_156, CKV_K8S_157")
def no_dangerous_verbs(manifest):
    if manifest.get("kind") in ROLE_KINDS:
        for index, rule in enumerate(manifest.get("rules") or []):
            for verb in sorted(DANGEROUS_VERBS & set(rule.get("verbs") or [])):
                yield f"rules[{index}] grants {verb}", verb


@resource_rule("DCF-RBAC-003", "No ClusterRole reads Secrets", "high", "CIS 5.1.2; NSA/CISA RBAC")
def no_cluster_secret_reads(manifest):
    if manifest.get("kind") == "ClusterRole":
        for index, rule in enumerate(manifest.get("rules") or []):
            resources = set(rule.get("resources") or [])
            if {"secrets", "*"} & resources and SECRET_READ_VERBS & set(rule.get("verbs") or []):
                yield f"rules[{index}] can read Secrets in every namespace"


@resource_rule("DCF-RBAC-004", "Nothing is bound to cluster-admin", "high", "CIS 5.1.1")
def no_cluster_admin(manifest):
    if manifest.get("kind") in BINDING_KINDS and dig(manifest, "roleRef", "name") == "cluster-admin":
        yield "binds cluster-admin"


@resource_rule("DCF-RBAC-005", "No bindings for anonymous or unauthenticated users", "high",
               "CIS 5.1.1; NSA/CISA authentication")
def no_anonymous_bindings(manifest):
    if manifest.get("kind") in BINDING_KINDS:
        for subject in manifest.get("subjects") or []:
            if subject.get("name") in ANONYMOUS_SUBJECTS:
                yield f"binds {subject['name']}"


@resource_rule("DCF-NS-001", "Namespaces enforce a Pod Security Admission level", "medium",
               "CIS 5.2.1; NSA/CISA pod security; Kubernetes Pod Security Standards")
def psa_labels(manifest):
    if manifest.get("kind") != "Namespace":
        return
    labels = labels_of(manifest)
    level = labels.get(POD_SECURITY_ENFORCE_LABEL)
    if level not in PSA_LEVELS:
        yield f"no {POD_SECURITY_ENFORCE_LABEL} label"
    elif level == "privileged":
        yield "enforces the privileged level (no restriction)", "privileged"


@resource_rule("DCF-NET-003", "Services have no externalIPs", "high",
               "Kyverno restrict-external-ips (CVE-2020-8554)")
def no_external_ips(manifest):
    if manifest.get("kind") == "Service" and dig(manifest, "spec", "externalIPs"):
        yield "sets spec.externalIPs"


@resource_rule("DCF-NET-004", "Ingresses terminate TLS", "medium", "NSA/CISA encrypt traffic in transit")
def ingress_tls(manifest):
    if manifest.get("kind") == "Ingress" and not dig(manifest, "spec", "tls"):
        yield "has no spec.tls"


@resource_rule("DCF-STO-001", "StorageClasses encrypt data at rest", "high", "NSA/CISA protect data at rest")
def encrypted_storage_class(manifest):
    if manifest.get("kind") != "StorageClass":
        return
    provisioner = manifest.get("provisioner", "")
    parameter = ENCRYPTION_PARAMETERS.get(provisioner)
    if parameter and (manifest.get("parameters") or {}).get(parameter) not in (None, "", "false"):
        return
    if (dig(manifest, "metadata", "annotations") or {}).get(HOST_ENCRYPTION_ANNOTATION):
        return
    yield (f"provisioner {provisioner} without {parameter}" if parameter else
           f"provisioner {provisioner} has no encryption parameter and no {HOST_ENCRYPTION_ANNOTATION} annotation")


@resource_rule("DCF-STO-002", "Ceph encrypts OSDs and the wire (msgr2 secure mode)", "high",
               "NSA/CISA protect data at rest and in transit; Rook security guide")
def ceph_cluster_encrypted(manifest):
    if manifest.get("kind") != "CephCluster":
        return
    spec = manifest.get("spec") or {}
    if dig(spec, "network", "connections", "encryption", "enabled") is not True:
        yield "network.connections.encryption.enabled is not true"
    if dig(spec, "network", "connections", "requireMsgr2") is not True:
        yield "network.connections.requireMsgr2 is not true"
    if str(dig(spec, "storage", "config", "encryptedDevice")).lower() != "true":
        yield "storage.config.encryptedDevice is not true"


def namespaces(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {dig(m, "metadata", "name"): m for m in manifests if m.get("kind") == "Namespace"}


def namespaces_labelled(manifests: list[Manifest], key: str, value: str | None = None) -> set[str]:
    return {name for name, ns in namespaces(manifests).items()
            if key in labels_of(ns) and (value is None or labels_of(ns)[key] == value)}


def of_kind(manifests: list[Manifest], kind: str, namespace: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind and (namespace is None or namespace_of(m) == namespace)]


def by_namespace(manifests: list[Manifest], kind: str) -> dict[str | None, list[Manifest]]:
    """Objects of one kind grouped by namespace: one pass, so set rules stay linear in the number of objects."""
    groups: dict[str | None, list[Manifest]] = {}
    for manifest in manifests:
        if manifest.get("kind") == kind:
            groups.setdefault(namespace_of(manifest), []).append(manifest)
    return groups


def is_default_deny(policy: Manifest) -> bool:
    spec = policy.get("spec") or {}
    return (spec.get("podSelector") in ({}, None) or spec.get("podSelector") == {"matchLabels": {}}) \
        and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or []) \
        and not spec.get("ingress") and not spec.get("egress")


@set_rule("DCF-NET-001", "Every namespace has a default-deny ingress and egress NetworkPolicy", "high",
          "CIS 5.3.2; NSA/CISA network separation")
def default_deny_everywhere(manifests):
    workload_namespaces = {namespace_of(m) for m in manifests if pod_spec(m) is not None} - {None}
    policies = by_namespace(manifests, "NetworkPolicy")
    out = []
    for name in sorted(set(namespaces(manifests)) | workload_namespaces):
        if not any(is_default_deny(p) for p in policies.get(name, [])):
            out.append(Violation("DCF-NET-001", f"Namespace/{name}",
                                 "no NetworkPolicy denies all ingress and egress by default"))
    return out


@set_rule("DCF-NET-002", "NodePort and LoadBalancer Services only in gateway namespaces", "medium",
          "NSA/CISA network separation; Kyverno restrict-nodeport, restrict-loadbalancer")
def exposure_only_at_gateway(manifests):
    gateways = namespaces_labelled(manifests, PURPOSE_LABEL, "gateway")
    return [Violation("DCF-NET-002", resource_id(s), f"type {dig(s, 'spec', 'type')} outside a gateway namespace")
            for s in of_kind(manifests, "Service")
            if dig(s, "spec", "type") in ("NodePort", "LoadBalancer") and namespace_of(s) not in gateways]


def inference_deployments(manifests: list[Manifest]) -> list[Manifest]:
    inference = namespaces_labelled(manifests, PURPOSE_LABEL, "inference")
    return [d for d in of_kind(manifests, "Deployment") + of_kind(manifests, "StatefulSet")
            if namespace_of(d) in inference or labels_of(d).get(PURPOSE_LABEL) == "inference"]


@set_rule("DCF-AVL-001", "Inference workloads run at least 2 replicas", "medium", "NSA/CISA availability; dcforge")
def inference_replicas(manifests):
    return [Violation("DCF-AVL-001", resource_id(d), f"replicas {dig(d, 'spec', 'replicas') or 1} < 2")
            for d in inference_deployments(manifests) if (dig(d, "spec", "replicas") or 1) < 2]


def selects(pdb: Manifest, pod_labels: dict[str, str]) -> bool:
    selector = dig(pdb, "spec", "selector") or {}
    wanted = selector.get("matchLabels") or {}
    if not wanted and not selector.get("matchExpressions"):
        return False
    if any(pod_labels.get(k) != v for k, v in wanted.items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in pod_labels
        if (operator == "In" and pod_labels.get(key) not in values) or (operator == "NotIn" and pod_labels.get(key)
                                                                        in values) \
                or (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


@set_rule("DCF-AVL-002", "Inference workloads are covered by a PodDisruptionBudget", "medium",
          "Kyverno require-pdb; dcforge")
def inference_pdb(manifests):
    budgets_by_namespace = by_namespace(manifests, "PodDisruptionBudget")
    out = []
    for workload in inference_deployments(manifests):
        pod_labels = dig(workload, "spec", "template", "metadata", "labels") or {}
        budgets = budgets_by_namespace.get(namespace_of(workload), [])
        if not any(selects(pdb, pod_labels) for pdb in budgets):
            out.append(Violation("DCF-AVL-002", resource_id(workload), "no PodDisruptionBudget selects its pods"))
    return out


@set_rule("DCF-RES-001", "Every team namespace has a ResourceQuota and a LimitRange", "medium",
          "NSA/CISA resource policies; CIS 5.7 (general policies)")
def team_resource_policies(manifests):
    present = {kind: by_namespace(manifests, kind) for kind in ("ResourceQuota", "LimitRange")}
    out = []
    for name in sorted(namespaces_labelled(manifests, TEAM_LABEL)):
        for kind in ("ResourceQuota", "LimitRange"):
            if not present[kind].get(name):
                out.append(Violation("DCF-RES-001", f"Namespace/{name}", f"team namespace has no {kind}"))
    return out


