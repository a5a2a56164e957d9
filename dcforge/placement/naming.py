"""What a check calls its nodes, and executors over some of them: a host's name (target hosts), a Kubernetes node's
name (pinned, target kubernetes) or `local-<i>` (this machine)."""

from __future__ import annotations

from dcforge.executors.hosts import HostsExecutor
from dcforge.harness.result import CheckResult

Pair = tuple[int, int]


def node_names(executor, count: int) -> list[str]:
    """What node i is called: its host (target hosts), its Kubernetes node (pinned, target kubernetes)."""
    hosts = getattr(executor, "hosts", None)
    if hosts:
        return [h.name for h in hosts[:count]]
    pinned = getattr(executor, "nodes", None)
    return list(pinned[:count]) if pinned else [f"local-{i}" for i in range(count)]

def pair_executor(executor, pair: Pair):
    """An executor over just the pair's nodes (hosts: those two hosts; kubernetes: pinned to those two nodes;
    local: this machine)."""
    if isinstance(executor, HostsExecutor):
        return HostsExecutor([executor.hosts[pair[0]], executor.hosts[pair[1]]], executor.options)
    if getattr(executor, "nodes", None):
        return executor.pinned([executor.nodes[pair[0]], executor.nodes[pair[1]]])
    return executor

def name_kubernetes_nodes(executor, result: CheckResult) -> None:
    """On a pinned kubernetes executor, each node row's host is a Kubernetes node: say so in `kubernetes_node`,
    which `accept --taint-failed` taints (dcforge/remediation.py)."""
    if getattr(executor, "nodes", None):
        for row in result.details.get("nodes") or []:
            row["kubernetes_node"] = row["host"]
