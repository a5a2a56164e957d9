"""RDMA facts the checks share: whether the spec declares RDMA for the acceptance pool, and where a node's RDMA
devices are listed (the kernel's /sys/class/infiniband: InfiniBand, RoCE and EFA devices alike)."""

from __future__ import annotations

SYS_INFINIBAND = "/sys/class/infiniband"


def declared_rdma_pool(spec) -> str | None:
    """The acceptance pool's name when it declares RDMA (`gpuPools[].rdma`; validation already requires
    `network.rdma.enabled` with it), else None."""
    pool = spec.acceptance_pool
    return pool.name if pool is not None and pool.rdma else None
