"""`system`: hardware and software inventory of the machine acceptance runs on.

Fails when the environment declares GPUs for this node and fewer are visible, when the visible GPU model differs
from the declared one, or when the loaded driver is not the pinned one.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from pathlib import Path

from pydantic import Field

from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.node import visible_gpus
from dcforge.harness.result import CheckResult
from dcforge.paths import REPO_ROOT
from dcforge.spec.gpus import gpu_model_for_device_name


class SystemConfig(CheckConfig):
    expected_gpus: int | None = Field(default=None, ge=0)
    """GPUs that must be visible; default: gpusPerNode of the acceptance pool (0 when the env has no pools)."""
    min_memory_gi: float = Field(default=0.0, ge=0)
    """Fail below this much system memory."""
    check_driver_pin: bool = Field(default=True)
    """Fail when GPUs are visible and the loaded driver differs from dcforge:versions.driver."""


def memory_gib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def git_commit(repo: Path = REPO_ROOT) -> str:
    """The checkout's commit (`-dirty` with uncommitted changes); asked once per process, since the report that
    records it is rewritten after every check."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{'-dirty' if dirty else ''}" if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def torch_versions() -> dict[str, str]:
    try:
        import torch
    except ImportError:
        return {"torch": "not installed"}
    versions = {"torch": torch.__version__, "torch_cuda": str(torch.version.cuda or "none")}
    if torch.cuda.is_available():
        try:
            versions["nccl"] = ".".join(str(part) for part in torch.cuda.nccl.version())
        except Exception:
            versions["nccl"] = "unknown"
    return versions


class SystemCheck:
    name = "system"
    description = "Hardware and software inventory; GPUs the environment declares must be visible."
    Config = SystemConfig
    metrics = (
        MetricSpec("cpu_count", "cores", None, "os.cpu_count()", "logical CPUs of the machine"),
        MetricSpec("memory_gi", "GiB", None, "MemTotal of /proc/meminfo / 2^20 KiB", "system memory"),
        MetricSpec("gpu_count", "GPUs", None, "GPUs listed by nvidia-smi, else by torch.cuda",
                   "GPUs visible on this machine"),
    )
    requires_declared_gpus = False  # it is the check that reports missing GPUs

    def run(self, ctx: CheckContext, config: SystemConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        spec = ctx.env.spec
        gpus = visible_gpus()
        cpus = os.cpu_count() or 0
        memory = memory_gib()
        result.add_metric("cpu_count", cpus)
        result.add_metric("memory_gi", round(memory, 2))
        result.add_metric("gpu_count", len(gpus))
        result.details = {
            "hostname": socket.gethostname(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            "os": platform.platform(),
            "python": platform.python_version(),
            **torch_versions(),
            "gpus": [gpu.__dict__ for gpu in gpus],
            "driver": gpus[0].driver if gpus else "none",
            "repo_commit": git_commit(),
            "env_file": str(ctx.env.path),
            "env_sha256": ctx.env.sha256,
            "pinned_versions": spec.versions.model_dump(by_alias=True),
        }
        ctx.log(f"{cpus} CPUs, {memory:.1f} GiB, {len(gpus)} GPUs")

        pool = spec.acceptance_pool
        expected = config.expected_gpus if config.expected_gpus is not None else (pool.gpus_per_node if pool else 0)
        result.details["expected_gpus"] = expected
        if len(gpus) < expected:
            where = f"pool {pool.name!r} declares {expected} {pool.gpu_model} per node" if pool else \
                f"expectedGpus is {expected}"
            result.fail(f"{where}, but {len(gpus)} GPUs are visible (nvidia-smi/torch.cuda)")
        if pool and gpus:
            seen = {gpu.name for gpu in gpus}
            models = {getattr(gpu_model_for_device_name(name), "name", name) for name in seen}
            if models != {pool.gpu_model}:
                result.fail(f"pool {pool.name!r} declares {pool.gpu_model}, visible GPUs are {sorted(seen)}")
        if gpus and config.check_driver_pin and gpus[0].driver and gpus[0].driver != spec.versions.driver:
            result.fail(f"driver {gpus[0].driver} is loaded, the environment pins {spec.versions.driver}")
        if memory < config.min_memory_gi:
            result.fail(f"{memory:.1f} GiB of memory, below minMemoryGi {config.min_memory_gi}")
        return result
