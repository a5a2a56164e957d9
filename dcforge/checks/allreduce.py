"""`allreduce`: collective bandwidth across the ranks of this node (NCCL on GPUs, gloo on CPU).

busbw at the largest message size is the headline (nccl-tests: algbw = bytes / t, busbw = algbw · 2(n−1)/n);
the whole sweep is a plot. Any size whose sum comes back wrong fails the check. The transport NCCL used is read
from the ranks' log (dcforge/nccl_transport.py); a fallback to Socket where the pool declares RDMA fails the check.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from pydantic import Field, field_validator

from dcforge.checks._rdma import declared_rdma_pool
from dcforge.checks._torchrun import TorchCheckConfig, run_torchrun
from dcforge.checks.on_pool import run_check_on_pool
from dcforge.harness.check import CheckContext, runs_on_pool
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.power import ENERGY_METRICS, record_energy, sample_power
from dcforge.harness.result import CheckResult, Plot, Series
from dcforge.nccl_transport import record_transport
from workloads.records import ALLREDUCE_RESULT_FILE, AllreduceResult, read_result_file


def _size(value: str | int) -> str:
    from workloads.allreduce import parse_size  # torch is imported there, but only inside functions' bodies

    parse_size(str(value))
    return str(value)


class AllreduceCheckConfig(TorchCheckConfig):
    min_nproc: ClassVar[int] = 2
    """A single rank has no bus to measure."""

    min_bytes: str = "1K"
    """Smallest message, e.g. 1K (binary units K, M, G)."""
    max_bytes: str = "1G"
    """Largest message; its busbw is the headline metric."""
    factor: int = Field(default=2, ge=2)
    """Size multiplier between steps of the sweep."""
    warmup: int = Field(default=5, ge=5)
    """Untimed iterations per size (nccl-tests uses 5)."""
    iterations: int = Field(default=20, ge=20)
    """Timed iterations per size."""
    dtype: str = Field(default="float32", pattern="^(float32|bfloat16|float16)$")
    """Element type of the buffers."""

    @field_validator("min_bytes", "max_bytes", mode="before")
    @classmethod
    def _valid_size(cls, value: str | int) -> str:
        return _size(value)


class AllreduceCheck:
    name = "allreduce"
    description = "All-reduce sweep over message sizes: busbw per nccl-tests, correctness per size."
    Config = AllreduceCheckConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/checks/on_pool.py)
    metrics = (
        MetricSpec("busbw_gbps", "GB/s", "higher", "busbw = algbw · 2(n−1)/n at the largest message size",
                   "bus bandwidth per rank, comparable across rank counts (nccl-tests)"),
        MetricSpec("algbw_gbps", "GB/s", "higher", "algbw = bytes / t at the largest message size",
                   "message bytes all-reduced per second"),
        MetricSpec("busbw_gbps", "GB/s", "higher", "busbw = algbw · 2(n−1)/n, best message size of the sweep",
                   "the highest bus bandwidth over all message sizes", stats=("max",)),
        MetricSpec("latency_us", "µs", "lower", "mean all-reduce time at the smallest message size",
                   "latency of a small all-reduce"),
        MetricSpec("sizes_incorrect", "sizes", "lower", "sizes whose all-reduce sum was wrong",
                   "correctness: must be 0"),
        *ENERGY_METRICS,
    )

    def run(self, ctx: CheckContext, config: AllreduceCheckConfig) -> CheckResult:
        if runs_on_pool(self, ctx.env.spec):  # target kubernetes: a machine of the acceptance pool
            return run_check_on_pool(ctx, self.name, config)
        result = CheckResult(self.name, declared=self.metrics)
        nproc = config.nproc()
        workdir = ctx.artefact_dir(self.name)
        output = workdir / ALLREDUCE_RESULT_FILE
        args = sweep_args(config, str(output))
        with sample_power() as power:
            run_torchrun(ctx, "allreduce.py", args, nproc=nproc, log_path=workdir / "torchrun.log")
        sweep = read_result_file(output, AllreduceResult)
        record_sweep(result, sweep, nproc)
        record_transport(result, sweep.environment["backend"], [("local", workdir / "torchrun.log")],
                         declared_rdma_pool(ctx.env.spec))
        record_energy(result, power)
        result.artefacts["sweep"] = ctx.relative(output)
        result.artefacts["torchrun_log"] = ctx.relative(workdir / "torchrun.log")
        return result


def sweep_args(config: AllreduceCheckConfig, output: str) -> list[str]:
    """workloads/allreduce.py's arguments for these settings (`output` may be an executor template)."""
    return ["--min-bytes", config.min_bytes, "--max-bytes", config.max_bytes, "--factor", str(config.factor),
            "--warmup", str(config.warmup), "--iters", str(config.iterations), "--dtype", config.dtype,
            "--output", output]


def record_sweep(result: CheckResult, sweep: AllreduceResult, ranks: int) -> None:
    """Metrics, correctness, details and the plot of one sweep (workloads/allreduce.py's result record)."""
    rows = sweep.results
    largest = rows[-1]
    result.add_metric("busbw_gbps", largest.busbw_gbps, context=f"{largest.bytes} bytes")
    result.add_metric("algbw_gbps", largest.algbw_gbps, context=f"{largest.bytes} bytes")
    result.add_metric("busbw_gbps.max", max(row.busbw_gbps for row in rows))
    result.add_metric("latency_us", rows[0].time_s * 1e6, context=f"{rows[0].bytes} bytes")
    wrong = [row.bytes for row in rows if not row.correct]
    result.add_metric("sizes_incorrect", len(wrong))
    if wrong:
        result.fail(f"all-reduce returned wrong sums at {len(wrong)} sizes (first: {wrong[0]} bytes)")
    result.details.update({**sweep.environment, "dtype": sweep.dtype, "warmup": sweep.warmup,
                           "iterations": sweep.iterations, "sweep": [dataclasses.asdict(row) for row in rows]})
    sizes = [float(row.bytes) for row in rows]
    result.plots.append(Plot(f"All-reduce bus bandwidth ({sweep.environment['backend']}, {ranks} ranks)",
                             "message size (bytes)", "GB/s",
                             [Series("busbw", sizes, [row.busbw_gbps for row in rows]),
                              Series("algbw", sizes, [row.algbw_gbps for row in rows])],
                             log_x=True))
