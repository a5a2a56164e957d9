"""Executors: a check describes its workload, an executor runs it here, on SSH hosts, or on Kubernetes.

See docs/executors.md.
"""

from dcforge.executors.base import (Execution, ExecutionOutcome, Executor, ExecutorError, NodeState, NodeStatus,
                                    Readiness, Resources, Role, VolumePurpose, Workload)
from dcforge.executors.hosts import Host, HostsExecutor, HostUnreachable, SshOptions
from dcforge.executors.kubernetes import KubernetesExecutor
from dcforge.executors.local import LocalExecutor

__all__ = ["Execution", "ExecutionOutcome", "Executor", "ExecutorError", "Host", "HostUnreachable", "HostsExecutor",
           "KubernetesExecutor", "LocalExecutor", "NodeState", "NodeStatus", "Readiness", "Resources", "Role",
           "SshOptions", "VolumePurpose", "Workload"]
