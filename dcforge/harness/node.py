"""The node acceptance runs on: which pool it belongs to, which GPUs it shows, and whether GPU workloads can be
judged on it. The runner applies the rule to every check that declares `requires_declared_gpus`; the system
check reports the same facts."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

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


def missing_declared_gpus(spec: Environment) -> str | None:
    """Why GPU workloads cannot be judged here, or None: the node's pool declares GPUs that are not visible."""
    pool = spec.acceptance_pool
    if pool is None:
        return None
    visible = len(visible_gpus())
    if visible >= pool.gpus_per_node:
        return None
    return (f"pool {pool.name!r} declares {pool.gpus_per_node} {pool.gpu_model} per node and {visible} are visible; "
            "measuring CPU numbers against GPU SLOs would mean nothing (see the system check)")


def no_gpu_reason() -> str | None:
    if visible_gpus():
        return None
    return "no GPU visible (nvidia-smi and torch.cuda see none): GPU health cannot be read on this machine"
