"""The kube-apiserver audit policy (`audit.k8s.io/v1 Policy`) of a self-managed cluster, from
`dcforge:security.auditPolicy`.

It is a file the API server reads (`--audit-policy-file`), not a cluster object, so `dcforge synth` writes it
beside the manifests as `apiserver-audit-policy.yaml` and it is neither applied nor schema-validated. Rules are
first-match, so the narrow ones come first.
"""

from __future__ import annotations

from typing import Any

from dcforge.spec.models import Environment

AUDIT_POLICY_FILE = "apiserver-audit-policy.yaml"
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]


def acceptance_namespaces(spec: Environment) -> list[str]:
    policy = spec.security.audit_policy
    if policy is not None and policy.acceptance_namespaces:
        return list(policy.acceptance_namespaces)
    return [ns.name for ns in spec.network.namespaces if ns.purpose == "acceptance"]


def audit_policy(spec: Environment) -> dict[str, Any] | None:
    """The Policy document, or None when the environment declares no audit policy."""
    declared = spec.security.audit_policy
    if declared is None:
        return None
    rules: list[dict[str, Any]] = [
        # Secrets: who read or changed which secret; never the body, which would copy the secret into the log.
        {"level": "Metadata", "resources": [{"group": "", "resources": ["secrets"]}]},
        # RBAC changes with the full request and response: what was granted, and what the server stored.
        {"level": "RequestResponse", "verbs": WRITE_VERBS,
         "resources": [{"group": "rbac.authorization.k8s.io",
                        "resources": ["roles", "rolebindings", "clusterroles", "clusterrolebindings"]}]},
        # Interactive access into pods: the stream itself is not auditable, who opened it is.
        {"level": "Metadata", "resources": [{"group": "", "resources": ["pods/exec", "pods/attach",
                                                                          "pods/portforward"]}]},
    ]
    namespaces = acceptance_namespaces(spec)
    if namespaces:
        rules.append({"level": "Request", "verbs": WRITE_VERBS, "namespaces": namespaces})
    rules.append({"level": declared.other_requests})
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "metadata": {"name": f"{spec.name}-apiserver-audit"},
        # RequestReceived duplicates every event that later reaches ResponseComplete.
        "omitStages": ["RequestReceived"],
        "rules": rules,
    }
