"""The all-reduce step: collective bandwidth across the ranks of this node (NCCL on GPUs, gloo on CPU).

busbw at the largest message size is the headline (nccl-tests: algbw = bytes / t, busbw = algbw · 2(n−1)/n);
the whole sweep is a plot. Any size whose sum comes back wrong fails the check. The transport NCCL used is read
from the ranks' log (dcforge/nccl_transport.py); a fallback to Socket where the pool declares RDMA fails the check.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from pydantic import Field, field_validator

from dcforge.harness.metrics import MetricSpec
from dcforge.harness.power import ENERGY_METRICS
from dcforge.harness.result import CheckResult, Plot, Series
from dcforge.steps.step import NODE_ENV, RESULTS, Step, node_torchrun
from dcforge.steps.torchrun import TorchCheckConfig
from workloads.records import ALLREDUCE_RESULT_FILE, AllreduceResult, read_result


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


ALLREDUCE_METRICS = (
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


def allreduce_step(config: AllreduceCheckConfig) -> Step:
    nproc = config.nproc()

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("allreduce", declared=ALLREDUCE_METRICS)
        record_sweep(judged, read_result(data.decode().splitlines(), AllreduceResult), nproc)
        return judged

    args = sweep_args(config, f"{RESULTS}/{ALLREDUCE_RESULT_FILE}")
    return Step("allreduce", node_torchrun("allreduce.py", args, nproc), ALLREDUCE_RESULT_FILE, judge, NODE_ENV)


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
