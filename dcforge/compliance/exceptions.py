"""Exceptions: the platform components that need host access by design, each scoped to its own namespace.

Their pods come from Helm charts that synth cannot expand offline; the exceptions are what a cluster-side policy
engine (or the CrossGuard pack, when those pods are visible) waives, and what the report lists.
"""

from __future__ import annotations

from dcforge.compliance.model import RuleException
from dcforge.manifests.common import (
    GPU_OPERATOR_NAMESPACE,
    NETWORK_OPERATOR_NAMESPACE,
    NFS_CSI_NAMESPACE,
    ROOK_NAMESPACE,
)
from dcforge.spec.models import Environment

# What a node agent (driver validator, device plugin, CSI node plugin, OSD) needs: privileged host access.
HOST_ACCESS_RULES = (
    "DCF-POD-001",  # privileged
    "DCF-POD-002",  # hostPID (MIG manager, validator)
    "DCF-POD-003",  # hostNetwork (CSI node plugins, Multus)
    "DCF-POD-005",  # privilege escalation is implied by privileged
    "DCF-POD-006",  # root: device nodes and kubelet sockets are root-owned
    "DCF-POD-007",  # capabilities
    "DCF-POD-008",
    "DCF-POD-009",  # seccomp: privileged containers run unconfined
    "DCF-POD-010",  # hostPath: /var/lib/kubelet/device-plugins, /run/nvidia, /dev, /var/lib/rook
    "DCF-POD-011",  # writable root filesystem of operator-managed daemons
    "DCF-NS-001",  # the namespace enforces the privileged level so those pods are admitted
)

GPU_OPERATOR_EXCEPTION = RuleException(
    id="EXC-GPU-OPERATOR", rules=HOST_ACCESS_RULES, namespaces=(GPU_OPERATOR_NAMESPACE,),
    reason="NVIDIA GPU Operator: privileged validator, MIG manager and DCGM exporter pods; the device plugin mounts "
           "the kubelet device-plugin socket directory (hostPath).")
NETWORK_OPERATOR_EXCEPTION = RuleException(
    id="EXC-NETWORK-OPERATOR", rules=HOST_ACCESS_RULES, namespaces=(NETWORK_OPERATOR_NAMESPACE,),
    reason="NVIDIA Network Operator: RDMA shared device plugin, Multus and CNI plugin installers write to the host.")
STORAGE_EXCEPTION = RuleException(
    id="EXC-STORAGE-DAEMONS", rules=HOST_ACCESS_RULES, namespaces=(ROOK_NAMESPACE, NFS_CSI_NAMESPACE),
    reason="Rook-Ceph OSDs own raw NVMe devices and /var/lib/rook; CSI node plugins mount volumes on the host.")
NODE_EVENTS_EXCEPTION = RuleException(
    id="EXC-NODE-EVENTS", rules=("DCF-NS-002",), namespaces=("default",),
    reason="allowNodeConditions: Events about a Node (cluster-scoped) are only accepted in default (or kube-system) "
           "by the API server; the Role there grants create on events and nothing else.")
DEFAULT_RDMA_NAMESPACES = ("training",)


def rdma_exception(namespaces: tuple[str, ...]) -> RuleException:
    return RuleException(
        id="EXC-RDMA-IPC-LOCK", rules=("DCF-POD-008",), namespaces=namespaces, details=("IPC_LOCK",),
        reason="RDMA (GPUDirect, NCCL over InfiniBand/RoCE) pins memory: training pods may add IPC_LOCK, "
               "and no other capability.")


GPU_EXCEPTIONS: tuple[RuleException, ...] = (
    GPU_OPERATOR_EXCEPTION,
    NETWORK_OPERATOR_EXCEPTION,
    STORAGE_EXCEPTION,
    rdma_exception(DEFAULT_RDMA_NAMESPACES),
)


def exceptions_for(spec: Environment) -> tuple[RuleException, ...]:
    """The exceptions of one environment: IPC_LOCK only where the spec attaches RDMA networks."""
    from dcforge.manifests.cluster_network import rdma_namespaces

    rdma = tuple(rdma_namespaces(spec)) if spec.network.rdma.enabled else ()
    fixed = tuple(e for e in GPU_EXCEPTIONS if e.id != "EXC-RDMA-IPC-LOCK")
    node_events = (NODE_EVENTS_EXCEPTION,) if spec.acceptance.allow_node_conditions else ()
    return fixed + ((rdma_exception(rdma),) if rdma else ()) + node_events
