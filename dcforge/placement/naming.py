"""What a check calls its nodes, and executors over some of them: a host's name (target hosts), a pool machine's
name (pinned, target kubernetes) or `local-<i>` (this machine)."""

from __future__ import annotations

from dcforge.executors.base import pool_machines
from dcforge.executors.hosts import HostsExecutor
from dcforge.harness.result import CheckResult

Pair = tuple[int, int]


def pinned_machines(executor) -> tuple[str, ...]:
    """The pool machines the executor is pinned to, by name; () when it places nodes otherwise."""
    machines = pool_machines(executor)
    return machines.nodes if machines is not None else ()


def node_names(executor, count: int) -> list[str]:
    """What node i is called: its host (target hosts), its Kubernetes node (pinned, target kubernetes)."""
    if isinstance(executor, HostsExecutor) and executor.hosts:
        return [h.name for h in executor.hosts[:count]]
    pinned = pinned_machines(executor)
    return list(pinned[:count]) if pinned else [f"local-{i}" for i in range(count)]


def pair_executor(executor, pair: Pair):
    """An executor over just the pair's nodes (hosts: those two hosts; kubernetes: pinned to those two nodes;
    local: this machine)."""
    if isinstance(executor, HostsExecutor):
        return HostsExecutor([executor.hosts[pair[0]], executor.hosts[pair[1]]], executor.options)
    if pinned := pinned_machines(executor):
        return pool_machines(executor).pinned([pinned[pair[0]], pinned[pair[1]]])
    return executor


def name_kubernetes_nodes(executor, result: CheckResult) -> None:
    """On a pinned kubernetes executor, each node row's host is a Kubernetes node: say so in `kubernetes_node`,
    which `accept --taint-failed` taints (dcforge/remediation.py)."""
    if pinned_machines(executor):
        for row in result.details.get("nodes") or []:
            row["kubernetes_node"] = row["host"]
