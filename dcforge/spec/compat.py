"""The driver / CUDA / NCCL / fabric manager / GPU Operator compatibility table (`data/compatibility.yaml`).

The rules exist only here. The Ansible `preflight` role applies none of its own: it reads the verdict these rules
give the pinned versions (`dcforge.inventory.compatibility_verdict`, written into the generated inventory and passed
by `dcforge provision`), so a combination refused here is refused on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from dcforge.spec.gpus import GpuModel


def version_tuple(version: str) -> tuple[int, ...]:
    """'570.172.08' -> (570, 172, 8); a leading 'v' is ignored."""
    return tuple(int(part) for part in version.lstrip("v").split("."))


@dataclass(frozen=True)
class CompatibilityTable:
    cuda_minimum_driver: dict[str, str]
    nccl_cuda: dict[str, tuple[str, str]]
    driver_branches: dict[str, dict]
    gpu_operator_driver_branches: dict[str, list[str]]

    @classmethod
    def from_mapping(cls, data: dict) -> "CompatibilityTable":
        return cls(
            cuda_minimum_driver={str(k): str(v) for k, v in data["cudaMinimumDriver"].items()},
            nccl_cuda={str(k): (str(v[0]), str(v[1])) for k, v in data["ncclCuda"].items()},
            driver_branches={str(k): v for k, v in data["driverBranches"].items()},
            gpu_operator_driver_branches={str(k): [str(b) for b in v] for k, v in data["gpuOperatorDriverBranches"].items()},
        )


def table_path() -> Path:
    return Path(str(resources.files("dcforge.spec").joinpath("data/compatibility.yaml")))


@lru_cache(maxsize=1)
def default_table() -> CompatibilityTable:
    return CompatibilityTable.from_mapping(yaml.safe_load(table_path().read_text()))


def version_problems(
    versions, gpu_models: list[GpuModel], *, prod: bool, table: CompatibilityTable | None = None
) -> list[tuple[str, str]]:
    """Every way the pinned versions cannot work together, as (key under dcforge:versions, message)."""
    table = table or default_table()
    problems: list[tuple[str, str]] = []
    driver = version_tuple(versions.driver)
    branch = versions.driver_branch

    if branch not in table.driver_branches:
        problems.append(("driver", f"driver branch {branch} is not in the compatibility table "
                                   f"(known: {', '.join(sorted(table.driver_branches))})"))
    elif prod and not table.driver_branches[branch].get("lts"):
        problems.append(("driver", f"driver branch {branch} is a feature branch; prod environments need a "
                                   "production/LTS branch"))

    minimum = table.cuda_minimum_driver.get(versions.cuda)
    if minimum is None:
        problems.append(("cuda", f"CUDA {versions.cuda} is not in the compatibility table "
                                 f"(known: {', '.join(table.cuda_minimum_driver)})"))
    elif driver < version_tuple(minimum):
        problems.append(("cuda", f"CUDA {versions.cuda} needs driver >= {minimum}, but driver is {versions.driver}"))

    nccl_range = table.nccl_cuda.get(versions.nccl)
    if nccl_range is None:
        problems.append(("nccl", f"NCCL {versions.nccl} is not in the compatibility table "
                                 f"(known: {', '.join(table.nccl_cuda)})"))
    else:
        low, high = nccl_range
        if not version_tuple(low) <= version_tuple(versions.cuda) <= version_tuple(high):
            problems.append(("nccl", f"NCCL {versions.nccl} is built for CUDA {low}..{high}, not CUDA {versions.cuda}"))

    if versions.fabric_manager is not None and versions.fabric_manager != versions.driver:
        problems.append(("fabricManager", f"fabric manager {versions.fabric_manager} must equal the driver "
                                          f"version {versions.driver} exactly"))

    operator_branches = table.gpu_operator_driver_branches.get(versions.gpu_operator)
    if operator_branches is None:
        problems.append(("gpuOperator", f"GPU Operator {versions.gpu_operator} is not in the compatibility table "
                                        f"(known: {', '.join(table.gpu_operator_driver_branches)})"))
    elif branch not in operator_branches:
        problems.append(("gpuOperator", f"GPU Operator {versions.gpu_operator} is validated with driver branches "
                                        f"{', '.join(operator_branches)}, not {branch}"))

    for model in gpu_models:
        if int(branch) < model.min_driver_branch:
            problems.append(("driver", f"{model.name} needs driver branch >= {model.min_driver_branch}, "
                                       f"got {branch}"))
        if model.open_kernel_modules_required and versions.kernel_module_type != "open":
            problems.append(("kernelModuleType", f"{model.name} ({model.arch}) only runs with the open kernel "
                                                 "modules; set kernelModuleType: open"))
    return problems
