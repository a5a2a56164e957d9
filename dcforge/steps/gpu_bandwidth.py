"""The gpu_bandwidth step: host↔device (pinned) and device↔device copy bandwidth for every GPU and GPU pair, and dense
BF16 GEMM TFLOPS against the GPU table's peak.

Copies are timed with CUDA events around back-to-back asynchronous copies, as nvbandwidth's copy-engine tests do
(`workloads/gpu_bandwidth.py`). The worst GPU or pair is the metric: one slow link is what hurts a job. Skipped
with its reason on a machine without GPUs.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from dcforge.harness.check import CheckConfig
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, Plot, Series
from dcforge.steps.step import RESULTS, Step


# How workloads/gpu_bandwidth.py's figures are computed (its docstring has the method); here so that the catalogue
# reads them without importing torch.
COPY_FORMULA = "GB/s = bytes · iters / t between CUDA events (nvbandwidth copy-engine method)"
GEMM_FORMULA = "TFLOPS = 2·n³ · iters / t (dense BF16 matmul, CUDA events)"


GPU_BANDWIDTH_FILE = "bandwidth.json"
"""What workloads/gpu_bandwidth.py writes (`--output`)."""


class GpuBandwidthConfig(CheckConfig):
    bytes: str = "256M"
    """Size of each copy (1K, 64M, 1G ...)."""
    iterations: int = Field(default=20, ge=1)
    gemm_size: int = Field(default=8192, ge=256)
    """n of the n×n×n BF16 matmul."""
    gemm_iterations: int = Field(default=50, ge=1)
    timeout_s: float = Field(default=300.0, gt=0)

    @field_validator("bytes")
    @classmethod
    def _size(cls, value: str) -> str:
        from workloads.allreduce import parse_size

        parse_size(value)
        return value


GPU_BANDWIDTH_METRICS = (
    MetricSpec("h2d_gbps", "GB/s", "higher", f"min over GPUs; {COPY_FORMULA}",
               "host-to-device copy bandwidth from pinned memory of the slowest GPU"),
    MetricSpec("d2h_gbps", "GB/s", "higher", f"min over GPUs; {COPY_FORMULA}",
               "device-to-host copy bandwidth into pinned memory of the slowest GPU"),
    MetricSpec("p2p_gbps", "GB/s", "higher", f"min over ordered GPU pairs; {COPY_FORMULA}",
               "device-to-device copy bandwidth of the slowest GPU pair (NVLink or PCIe peer)"),
    MetricSpec("p2p_gbps", "GB/s", "higher", f"max over ordered GPU pairs; {COPY_FORMULA}",
               "device-to-device copy bandwidth of the fastest GPU pair", stats=("max",)),
    MetricSpec("gemm_tflops", "TFLOPS", "higher", f"min over GPUs; {GEMM_FORMULA}",
               "dense BF16 matmul throughput of the slowest GPU"),
    MetricSpec("gemm_fraction_of_peak", "ratio", "higher",
               "min over GPUs of GEMM TFLOPS / dense BF16 peak (dcforge/spec/data/gpus.yaml)",
               "how close the slowest GPU's matmul comes to its datasheet peak"),
)


def gpu_bandwidth_step(config: GpuBandwidthConfig) -> Step:
    """workloads/gpu_bandwidth.py on the node's GPUs (its JSON: `measurements_result`)."""
    import json

    def judge(data: bytes) -> CheckResult:
        return measurements_result(CheckResult("gpu_bandwidth", declared=GPU_BANDWIDTH_METRICS),
                                   json.loads(data))

    command = ("{python}", "workloads/gpu_bandwidth.py", "--bytes", config.bytes, "--iters", str(config.iterations),
               "--gemm-size", str(config.gemm_size), "--gemm-iters", str(config.gemm_iterations),
               "--output", f"{RESULTS}/{GPU_BANDWIDTH_FILE}")
    return Step("gpu_bandwidth", command, GPU_BANDWIDTH_FILE, judge)


def measurements_result(result: CheckResult, measured: dict) -> CheckResult:
    """Metrics, verdict and plots from the workload's JSON (its format: workloads/gpu_bandwidth.py `main`)."""
    from dcforge.spec.gpus import gpu_model_for_device_name

    per_gpu, pairs, gemms = measured["host_device"], measured["device_device"], measured["gemm"]
    size = f"{measured['bytes']} bytes × {measured['iters']}"
    result.add_metric("h2d_gbps", min(r["h2d_gbps"] for r in per_gpu), size)
    result.add_metric("d2h_gbps", min(r["d2h_gbps"] for r in per_gpu), size)
    if pairs:
        result.add_metric("p2p_gbps", min(r["gbps"] for r in pairs), size)
        result.add_metric("p2p_gbps.max", max(r["gbps"] for r in pairs), size)
    result.add_metric("gemm_tflops", min(r["tflops"] for r in gemms), f"n = {measured['gemm_size']}")
    fractions = []
    for row in gemms:
        model = gpu_model_for_device_name(row["name"])
        if model is not None:
            fractions.append(row["tflops"] * 1e12 / model.peak_bf16_flops)
    if fractions:
        result.add_metric("gemm_fraction_of_peak", min(fractions))
    no_peer = [f"{r['source']}→{r['destination']}" for r in pairs if not r["peer_access"]]
    if no_peer:
        result.fail(f"no peer access between GPUs {', '.join(no_peer[:8])}: device copies go through the host")
    # added to what the result already carries (a GPU shortfall's finding on this machine)
    result.details.update({key: measured[key] for key in ("bytes", "iters", "gemm_size", "gemm_iters", "torch",
                                                          "cuda")})
    gpus = [float(r["gpu"]) for r in per_gpu]
    result.plots.append(Plot("Host↔device copy bandwidth (pinned)", "GPU", "GB/s",
                             [Series("H2D", gpus, [r["h2d_gbps"] for r in per_gpu]),
                              Series("D2H", gpus, [r["d2h_gbps"] for r in per_gpu])], kind="bar"))
    if pairs:
        result.plots.append(Plot("Device→device copy bandwidth per ordered pair", "pair (source·100 + "
                                 "destination)", "GB/s", [Series("D2D", [float(r["source"] * 100 + r["destination"])
                                                                         for r in pairs],
                                                                 [r["gbps"] for r in pairs])], kind="bar"))
    return result
