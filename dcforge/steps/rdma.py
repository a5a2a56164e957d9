"""RDMA facts the checks share: whether the spec declares RDMA for the acceptance pool, and where a node's RDMA
devices are listed (the kernel's /sys/class/infiniband: InfiniBand, RoCE and EFA devices alike)."""

from __future__ import annotations

from dcforge.findings import Action

SYS_INFINIBAND = "/sys/class/infiniband"
UNMEASURED_RDMA_ACTION = Action.REBOOT_NODE
"""What an operator does first about a node of an RDMA pool that shows no RDMA device or cannot measure it (the
HCA driver did not load, the device fell off the bus, the image lacks perftest); where it persists, service."""


def declared_rdma_pool(spec) -> str | None:
    """The acceptance pool's name when it declares RDMA (`gpuPools[].rdma`; validation already requires
    `network.rdma.enabled` with it), else None."""
    pool = spec.acceptance_pool
    return pool.name if pool is not None and pool.rdma else None
