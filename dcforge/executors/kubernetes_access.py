"""The API access the kubernetes executor needs, defined once (docs/executors.md, least privilege).

The Acceptance component's Role (dcforge/manifests/acceptance.py) is generated from `EXECUTOR_API_ACCESS`, and the
executor tests (tests/unit/test_kubernetes_executor.py) record every request a run makes against the fake API and
prove each one is in it. Kept free of other dcforge imports: the manifest builders import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ApiAccess:
    """API access the executor needs on one resource, in the acceptance namespace."""

    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]


EXECUTOR_API_ACCESS: tuple[ApiAccess, ...] = (
    ApiAccess("", ("services", "persistentvolumeclaims"), ("create", "list", "delete")),
    # a run's API key for the server it starts (Workload.secrets): write-only -- never get, list or watch, which
    # would read every Secret of the namespace; the Secret is deleted by name, and by the garbage collector with
    # the Job or Deployment that owns it
    ApiAccess("", ("secrets",), ("create", "delete")),
    ApiAccess("", ("pods",), ("list", "watch", "delete")),
    ApiAccess("", ("pods/log",), ("get",)),
    ApiAccess("", ("events",), ("list", "watch")),
    ApiAccess("batch", ("jobs",), ("create", "list", "delete")),
    ApiAccess("apps", ("deployments",), ("create", "list", "delete")),
    ApiAccess("networking.k8s.io", ("networkpolicies",), ("create", "list", "delete")),
)
"""Every API call the kubernetes executor makes, defined once: the Acceptance component's Role is generated from
it (dcforge/manifests/acceptance.py) and the executor tests prove nothing else is requested."""


NODE_LIST_ACCESS: tuple[ApiAccess, ...] = (
    ApiAccess("", ("nodes",), ("list",)),
)
"""What pinning needs (`KubernetesExecutor.pool_nodes`): list the acceptance pool's Nodes by its labels, to place
the pairs of `slow_node` and `network` on named machines. Nodes are cluster-scoped, so this is a ClusterRole; the
Acceptance component always grants it: reading node names, labels and conditions changes nothing."""


REMEDIATION_API_ACCESS: tuple[ApiAccess, ...] = (
    ApiAccess("", ("nodes",), ("get", "patch")),
)
"""What `dcforge accept --taint-failed` needs (dcforge/remediation.py): read a node's taints, write them back. Nodes are
cluster-scoped, so this is a ClusterRole; the Acceptance component adds it only where the environment sets
`dcforge:acceptance.allowNodeTaints: true` (patch on nodes could also cordon or relabel any node)."""


NODE_HEALTH_API_ACCESS: tuple[ApiAccess, ...] = (
    ApiAccess("", ("nodes",), ("get", "patch")),
    ApiAccess("", ("nodes/status",), ("patch",)),
)
"""What `dcforge accept --mark-nodes` needs on nodes (dcforge/node_health.py): read the node, patch its status (the
DcforgeNodeHealthy condition) and its metadata (the recommended-action annotation). A ClusterRole, added only where
the environment sets `dcforge:acceptance.allowNodeConditions: true`."""

NODE_EVENT_ACCESS: tuple[ApiAccess, ...] = (
    ApiAccess("", ("events",), ("create",)),
)
"""And the Events about nodes, in `default` only (where node events live): a Role there, with the ClusterRole."""

REPORT_ARCHIVE_ACCESS: tuple[ApiAccess, ...] = (
    ApiAccess("", ("configmaps",), ("create", "list", "delete")),
)
"""What a scheduled run needs to keep its report (dcforge/report/archive.py): one ConfigMap per run in the acceptance
namespace, the oldest beyond `keepReports` deleted. Granted in that namespace only where a schedule is declared."""


def rbac_rules(access: tuple[ApiAccess, ...] = EXECUTOR_API_ACCESS) -> list[dict[str, Any]]:
    """The RBAC rules granting exactly `access`."""
    return [{"apiGroups": [a.group], "resources": list(a.resources), "verbs": list(a.verbs)} for a in access]
