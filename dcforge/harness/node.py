"""The node acceptance runs on: which pool it belongs to, which GPUs it shows, and whether GPU workloads can be
judged on it.

The rule (docs/skips.md): where the environment declares GPUs for this node and fewer are visible, that is a
failing finding of every GPU check, never a skip -- a GPU node whose driver failed or whose GPUs fell off the bus
must not pass its health check. "No GPU visible" stays a skip only where no GPU is declared for this machine. The
runner applies the rule to every check that declares `requires_declared_gpus`; gpu_health and gpu_bandwidth apply it
themselves (they still read what they can); the system check reports the same facts."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from dcforge.findings import Action
from dcforge.spec.models import Environment


@dataclass
class VisibleGpu:
    name: str
    memory_mib: float
    driver: str


def visible_gpus() -> list[VisibleGpu]:
    """GPUs as NVML sees them through nvidia-smi, else through torch.cuda, else none."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout
            gpus = []
            for line in out.strip().splitlines():
                name, memory, driver = (part.strip() for part in line.split(","))
                gpus.append(VisibleGpu(name, float(memory), driver))
            return gpus
        except (subprocess.SubprocessError, ValueError, OSError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            return [
                VisibleGpu(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / 2**20, "")
                for i in range(torch.cuda.device_count())
            ]
    except Exception:  # a broken CUDA install must not hide the rest of the inventory
        pass
    return []


MISSING_GPU_ACTION = Action.REBOOT_NODE
"""What an operator does first about a declared GPU that is not visible (driver not loaded, GPU off the bus: NVIDIA
files "fallen off the bus" under a bare-metal restart); a node where it persists goes to service."""


@dataclass(frozen=True)
class GpuShortfall:
    """A node that shows fewer GPUs than its pool declares: a failing finding (`str` is its one line)."""

    pool: str
    gpu_model: str
    declared: int
    visible: int
    where: str = "on this machine"

    def __str__(self) -> str:
        return (f"pool {self.pool!r} declares {self.declared} {self.gpu_model} per node and {self.visible} are "
                f"visible {self.where} (driver not loaded or GPUs off the bus); recommended action: "
                f"{MISSING_GPU_ACTION.label}")

    def finding(self) -> dict:
        """The finding as the report's per-node tables and findings lists carry it."""
        return {"severity": "fail", "gpu": None, "message": str(self), "action": MISSING_GPU_ACTION.value,
                "declared_gpus": self.declared, "visible_gpus": self.visible}


def gpu_shortfall(spec: Environment, visible: int | None = None, where: str = "on this machine") -> GpuShortfall | None:
    """The shortfall of a node of the acceptance pool that shows `visible` GPUs (default: this machine's), or None
    when it shows every GPU the pool declares (or the environment declares no GPU pool)."""
    pool = spec.acceptance_pool
    if pool is None:
        return None
    seen = len(visible_gpus()) if visible is None else visible
    if seen >= pool.gpus_per_node:
        return None
    return GpuShortfall(pool.name, pool.gpu_model, pool.gpus_per_node, seen, where)


def no_gpu_reason() -> str | None:
    if visible_gpus():
        return None
    return "no GPU visible (nvidia-smi and torch.cuda see none): GPU health cannot be read on this machine"
