"""The GPU models table (`data/gpus.yaml`): peak FLOP/s for MFU, MIG support, driver minimums."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import yaml


@dataclass(frozen=True)
class GpuModel:
    name: str
    arch: str
    memory_gib: int
    peak_bf16_flops: float
    """Dense BF16 peak per GPU, FLOP/s: the MFU denominator."""
    nvswitch: bool
    mig_capable: bool
    min_driver_branch: int
    open_kernel_modules_required: bool


def _load() -> dict[str, GpuModel]:
    text = resources.files("dcforge.spec").joinpath("data/gpus.yaml").read_text()
    return {
        name: GpuModel(
            name=name,
            arch=row["arch"],
            memory_gib=int(row["memoryGiB"]),
            peak_bf16_flops=float(row["peakBf16Flops"]),
            nvswitch=bool(row["nvswitch"]),
            mig_capable=bool(row["migCapable"]),
            min_driver_branch=int(row["minDriverBranch"]),
            open_kernel_modules_required=bool(row["openKernelModulesRequired"]),
        )
        for name, row in yaml.safe_load(text).items()
    }


GPU_MODELS: dict[str, GpuModel] = _load()


def gpu_model_for_device_name(device_name: str) -> GpuModel | None:
    """Map an NVML/torch device name ("NVIDIA H100 80GB HBM3") to a table entry, or None if unknown."""
    name = device_name.upper()
    candidates = {
        "H200": "H200-SXM",
        "B200": "B200",
        "L40S": "L40S",
        "L4": "L4",
    }
    if "H100" in name:
        return GPU_MODELS["H100-PCIE" if "PCIE" in name else "H100-SXM"]
    if "A100" in name:
        return GPU_MODELS["A100-PCIE-80GB" if "PCIE" in name else "A100-SXM4-80GB"]
    for token, key in candidates.items():
        if token in name.split() or token in name.replace("-", " ").split():
            return GPU_MODELS[key]
    return None
