"""The system step: hardware and software inventory of the machine (or node) acceptance runs on.

Fails when the environment declares GPUs for this node and fewer are visible, when the visible GPU model differs
from the declared one, or when the loaded driver is not the pinned one.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from dcforge.harness.check import CheckConfig
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.node import visible_gpus
from dcforge.harness.result import CheckResult
from dcforge.spec.gpus import gpu_model_for_device_name
from dcforge.steps.step import RESULTS, Step
from workloads.records import SYSTEM_FACTS_FILE, SystemFacts, emit_result, read_result

if TYPE_CHECKING:
    from dcforge.spec.models import Environment


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


SYSTEM_METRICS = (
    MetricSpec("cpu_count", "cores", None, "os.cpu_count()", "logical CPUs of the machine"),
    MetricSpec("memory_gi", "GiB", None, "MemTotal of /proc/meminfo / 2^20 KiB", "system memory"),
    MetricSpec("gpu_count", "GPUs", None, "GPUs listed by nvidia-smi, else by torch.cuda",
               "GPUs visible on this machine"),
)


def system_step(spec: Environment, config: SystemConfig) -> Step:
    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("system", declared=SYSTEM_METRICS)
        judge_facts(judged, read_result(data.decode().splitlines(), SystemFacts), spec, config)
        return judged

    return Step("system", ("{python}", "-m", "dcforge.steps.system", "--output", f"{RESULTS}/{SYSTEM_FACTS_FILE}"),
                SYSTEM_FACTS_FILE, judge)


def judge_facts(result: CheckResult, facts: SystemFacts, spec: Environment, config: SystemConfig) -> None:
    """The metrics, the machine's details and the verdicts of one machine's facts (this one's, or a node's)."""
    record_facts(result, facts)
    result.details.update({
        "hostname": facts.hostname,
        "cpu_model": facts.cpu_model,
        "kernel": facts.kernel,
        "os": facts.os,
        "python": facts.python,
        **facts.versions,
        "gpus": facts.gpus,
        "driver": facts.gpus[0]["driver"] if facts.gpus else "none",
        "pinned_versions": spec.versions.model_dump(by_alias=True),
        "expected_gpus": expected_gpus(spec, config),
    })
    for problem in facts_problems(facts, spec, config):
        result.fail(problem)


def node_facts() -> SystemFacts:
    """The facts of the machine this process runs on (the system check's, and each node's in node_level)."""
    return SystemFacts(hostname=socket.gethostname(), cpu_count=os.cpu_count() or 0, memory_gi=round(memory_gib(), 2),
                       cpu_model=cpu_model(), kernel=platform.release(), os=platform.platform(),
                       python=platform.python_version(), versions=torch_versions(),
                       gpus=[dict(gpu.__dict__) for gpu in visible_gpus()])


def record_facts(result: CheckResult, facts: SystemFacts) -> None:
    result.add_metric("cpu_count", facts.cpu_count)
    result.add_metric("memory_gi", facts.memory_gi)
    result.add_metric("gpu_count", len(facts.gpus))


def expected_gpus(spec: Environment, config: SystemConfig) -> int:
    pool = spec.acceptance_pool
    return config.expected_gpus if config.expected_gpus is not None else (pool.gpus_per_node if pool else 0)


def facts_problems(facts: SystemFacts, spec: Environment, config: SystemConfig) -> list[str]:
    """Why these facts fail the environment's expectations (GPU count and model, driver pin, memory); [] when
    they meet them."""
    problems = []
    pool, gpus = spec.acceptance_pool, facts.gpus
    expected = expected_gpus(spec, config)
    if len(gpus) < expected:
        where = f"pool {pool.name!r} declares {expected} {pool.gpu_model} per node" if pool else \
            f"expectedGpus is {expected}"
        problems.append(f"{where}, but {len(gpus)} GPUs are visible (nvidia-smi/torch.cuda)")
    if pool and gpus:
        seen = {gpu["name"] for gpu in gpus}
        models = {getattr(gpu_model_for_device_name(name), "name", name) for name in seen}
        if models != {pool.gpu_model}:
            problems.append(f"pool {pool.name!r} declares {pool.gpu_model}, visible GPUs are {sorted(seen)}")
    driver = gpus[0]["driver"] if gpus else ""
    if driver and config.check_driver_pin and driver != spec.versions.driver:
        problems.append(f"driver {driver} is loaded, the environment pins {spec.versions.driver}")
    if facts.memory_gi < config.min_memory_gi:
        problems.append(f"{facts.memory_gi:.1f} GiB of memory, below minMemoryGi {config.min_memory_gi}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m dcforge.steps.system --output FILE`: this node's facts as one SystemFacts line (node_level
    runs it on every node through the executor)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output", help="also write the SystemFacts line here")
    emit_result(node_facts(), parser.parse_args(argv).output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
