"""`gpu_bandwidth`: host↔device (pinned) and device↔device copy bandwidth for every GPU and GPU pair, and dense
BF16 GEMM TFLOPS against the GPU table's peak (settings, metrics and judge: dcforge/steps/gpu_bandwidth.py).

Skipped with its reason on a machine without GPUs.
"""

from __future__ import annotations

import json
import sys

from dcforge.harness.check import CheckContext
from dcforge.harness.processes import ManagedProcess
from dcforge.harness.result import CheckResult, CheckSkipped
from dcforge.placement.pool import on_a_pool_machine
from dcforge.placement.scope import single_node
from dcforge.harness.node import gpu_shortfall, no_gpu_reason
from dcforge.steps.gpu_bandwidth import (GPU_BANDWIDTH_FILE, GPU_BANDWIDTH_METRICS, GpuBandwidthConfig,
                                         gpu_bandwidth_step, measurements_result)
from dcforge.steps.torchrun import WORKLOADS_DIR, log_tail


class GpuBandwidthCheck:
    name = "gpu_bandwidth"
    description = "H2D/D2H (pinned) and D2D copy bandwidth per GPU and pair; dense BF16 GEMM TFLOPS vs peak."
    Config = GpuBandwidthConfig
    requires_declared_gpus = False  # per-GPU and per-pair figures hold whatever number of GPUs is visible
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/placement/pool.py)
    metrics = GPU_BANDWIDTH_METRICS

    def run(self, ctx: CheckContext, config: GpuBandwidthConfig) -> CheckResult:
        return single_node(ctx, self, here=lambda: self.here(ctx, config), pool=lambda: on_a_pool_machine(
            ctx, self.name, lambda _: gpu_bandwidth_step(config),
            skip_without_gpus="the acceptance pool's machines have no GPUs: no GPU bandwidth to measure"))

    def here(self, ctx: CheckContext, config: GpuBandwidthConfig) -> CheckResult:
        # fewer GPUs than declared fails; "no GPU visible" skips only where none is declared (docs/skips.md)
        shortfall = gpu_shortfall(ctx.env.spec)
        result = CheckResult(self.name, declared=self.metrics)
        if shortfall is not None:
            result.details["findings"] = [shortfall.finding()]
            result.fail(str(shortfall))
            if shortfall.visible == 0:
                return result
        elif reason := no_gpu_reason():
            raise CheckSkipped(reason.replace("GPU health cannot be read", "no GPU bandwidth to measure"))
        workdir = ctx.artefact_dir(self.name)
        output, log_path = workdir / GPU_BANDWIDTH_FILE, workdir / "bandwidth.log"
        command = [sys.executable, str(WORKLOADS_DIR / "gpu_bandwidth.py"), "--bytes", config.bytes,
                   "--iters", str(config.iterations), "--gemm-size", str(config.gemm_size),
                   "--gemm-iters", str(config.gemm_iterations), "--output", str(output)]
        ctx.log(" ".join(command[1:]))
        with ManagedProcess(command, log_path=log_path) as process:
            code = process.wait(min(config.timeout_s, max(1.0, ctx.remaining_s())))
        result.artefacts["log"] = ctx.relative(log_path)
        if code == 3:
            no_cuda = "torch sees no CUDA device (a CPU build of torch, or CUDA_VISIBLE_DEVICES empty)"
            if ctx.env.spec.acceptance_pool is None:
                raise CheckSkipped(no_cuda)
            return result.fail(f"{no_cuda}: the GPU bandwidth the environment declares cannot be measured")
        if code != 0:
            raise RuntimeError(f"gpu_bandwidth.py exited with {code}; log tail:\n{log_tail(log_path)}")
        result.artefacts["measurements"] = ctx.relative(output)
        return measurements_result(result, json.loads(output.read_text()))


