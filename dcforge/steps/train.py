"""The train step: can this machine (or node) train? Tokens/s, step time, MFU and a falling loss, from a real torchrun.

Formulas (docs/metrics.md#train): tokens/s per device = tokens since the last log / (Δt · devices); MFU =
flops_per_token · tokens/s / peak, flops_per_token = 6·N_non_embedding + 6·L·H·Q·T (torchtitan); peak is the GPU
table's dense BF16 figure on GPUs and a measured fp32 matmul peak of one rank's cores on CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field
from pydantic.alias_generators import to_camel

from dcforge.errors import ConfigError
from dcforge.harness.check import CheckContext, settings_error
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.power import ENERGY_METRICS, JOULES_PER_TOKEN
from dcforge.harness.result import CheckResult, Plot, Series
from dcforge.steps.step import NODE_ENV, RESULTS, Step, node_torchrun
from dcforge.steps.stats import percentile
from dcforge.steps.torchrun import MATMUL_PEAK_FORMULA, ModelTorchCheckConfig
from workloads.records import TRAIN_METRICS_FILE, TrainStep, read_records

if TYPE_CHECKING:  # workloads import torch: only when a check runs
    from workloads.train_config import TrainConfig, TrainConfigError


def train_config_error(ctx: CheckContext, check: str, error: TrainConfigError) -> ConfigError:
    """A TrainConfig refusal as an error on the check's settings key (the same field name, camelCase)."""
    return settings_error(ctx, check, to_camel(error.field), str(error))


class TrainCheckConfig(ModelTorchCheckConfig):
    seq_len: int = Field(default=128, ge=1)
    """Tokens per sequence."""
    global_batch_size: int = Field(default=8, ge=1)
    """Sequences per step over all ranks; must be divisible by nprocPerNode."""
    steps: int = Field(default=20, ge=2)
    """Optimizer steps to run."""
    warmup_steps_excluded: int = Field(default=3, ge=0)
    """First steps left out of throughput and step-time statistics (allocator and thread-pool warm-up)."""
    parallelism: str = Field(default="ddp", pattern="^(ddp|fsdp)$")
    """ddp or fsdp (FSDP2 fully_shard, GPU)."""
    compile: bool = False
    """torch.compile the model."""


TRAIN_METRICS = (
    MetricSpec("tokens_per_s", "tokens/s/device", "higher",
               "tokens/s per device = tokens since last log / (Δt · devices), time-weighted over the steps "
               "after warm-up", "training throughput of one device"),
    MetricSpec("tokens_per_s_total", "tokens/s", "higher", "tokens/s per device · devices",
               "training throughput of the whole job"),
    MetricSpec("step_time_ms", "ms", "lower", "exact percentile of step times after warm-up",
               "wall time of one optimizer step", stats=("p50", "p95")),
    MetricSpec("mfu", "ratio", "higher",
               "MFU = flops_per_token · tokens/s / peak; flops_per_token = 6·N + 6·L·H·Q·T",
               "model FLOPs utilisation: the share of the device's peak the training achieves"),
    MetricSpec("loss_start", "nats", None, "mean cross-entropy of the first step", "loss before training"),
    MetricSpec("loss_end", "nats", "lower", "mean cross-entropy of the last step",
               "loss after training; must be below loss_start"),
    *ENERGY_METRICS,
    JOULES_PER_TOKEN,
)


def train_config(config: TrainCheckConfig, metrics_file: str, checkpoint_dir: str, *, peak_flops: float | None = None,
                 threads: int | None = None, **overrides) -> TrainConfig:
    """The workload's TrainConfig for the train settings: one checkpoint at the end, no resume, a record every 5
    steps (paths may be executor templates); `overrides` for the failover checks' faulted and reference runs."""
    fields = dict(parallelism=config.parallelism, compile=config.compile, metrics_file=metrics_file,
                  checkpoint_dir=checkpoint_dir, checkpoint_every=config.steps, keep_checkpoints=1, resume=False,
                  peak_flops=peak_flops, log_every=5, threads=threads)
    return workload_config(config.preset, config.seq_len, config.global_batch_size, config.steps,
                           **{**fields, **overrides})


def workload_config(preset: str, seq_len: int, global_batch_size: int, steps: int, **fields) -> TrainConfig:
    """workloads/train.py's TrainConfig: the model, batch and length every run names, and what this run adds
    (`fields`: its files, checkpoints, faults); the one place a check's settings become the workload's."""
    from workloads.train_config import TrainConfig

    return TrainConfig(preset=preset, seq_len=seq_len, global_batch_size=global_batch_size, steps=steps, **fields)


def validated(ctx: CheckContext, settings_key: str, config: TrainConfig, nproc: int) -> TrainConfig:
    """`config` once the workload accepts it for `nproc` ranks; its refusal names the settings key otherwise."""
    from workloads.train_config import TrainConfigError

    try:
        config.validate(nproc)
    except TrainConfigError as error:
        raise train_config_error(ctx, settings_key, error) from None
    return config


def train_step(ctx: CheckContext, config: TrainCheckConfig, threads: int | None, settings_key: str) -> Step:
    """`threads`: intra-op threads per rank (None: the workload's default); `settings_key` names the settings in a
    refusal (`train`, `node_level.train`)."""
    nproc = config.nproc()
    workload = validated(ctx, settings_key, train_config(config, f"{RESULTS}/{TRAIN_METRICS_FILE}",
                                                         "{volume[scratch]}/train", threads=threads), nproc)

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("train", declared=TRAIN_METRICS)
        # no MFU peak: the CPU peak is measured on this machine, not on the node (a GPU's comes from the workload)
        summarize(judged, read_records(data.decode().splitlines(), TrainStep), config, nproc, None)
        return judged

    return Step("train", node_torchrun("train.py", workload.to_args(), nproc), TRAIN_METRICS_FILE, judge, NODE_ENV)


def summarize(result: CheckResult, steps: list[TrainStep], config: TrainCheckConfig, nproc: int,
              peak: float | None) -> None:
    if len(steps) < config.steps:
        result.fail(f"{len(steps)} of {config.steps} steps logged")
        if not steps:
            return
    steady = steps[config.warmup_steps_excluded:] or steps
    tokens_per_device = sum(r.tokens_per_s * r.step_time_s for r in steady)
    elapsed = sum(r.step_time_s for r in steady)
    tokens_per_s = tokens_per_device / elapsed
    step_ms = [r.step_time_s * 1000 for r in steady]
    result.add_metric("tokens_per_s", tokens_per_s)
    result.add_metric("tokens_per_s_total", tokens_per_s * nproc)
    result.add_metric("step_time_ms.p50", percentile(step_ms, 50))
    result.add_metric("step_time_ms.p95", percentile(step_ms, 95))
    if any(r.mfu is not None for r in steady):
        mfu = sum((r.mfu or 0.0) * r.step_time_s for r in steady) / elapsed  # time-weighted, like tokens/s
        source = f"{'measured CPU matmul peak, ' + MATMUL_PEAK_FORMULA if peak else 'GPU table peak'}"
        result.add_metric("mfu", mfu, context=source)
    loss_start, loss_end = steps[0].loss, steps[-1].loss
    result.add_metric("loss_start", loss_start)
    result.add_metric("loss_end", loss_end)
    if not loss_end < loss_start:
        result.fail(f"loss did not fall: {loss_start:.4f} at step 1, {loss_end:.4f} at step {steps[-1].step}")
    result.details.update({"nproc": nproc, "preset": config.preset, "seq_len": config.seq_len,
                           "global_batch_size": config.global_batch_size,
                           "peak_flops_per_device": peak, "steps_in_statistics": len(steady)})
    xs = [float(r.step) for r in steps]
    result.plots.append(Plot("Training loss", "step", "loss (nats)", [Series("loss", xs, [r.loss for r in steps])]))
    result.plots.append(Plot("Training throughput", "step", "tokens/s per device",
                             [Series("tokens/s", xs, [r.tokens_per_s for r in steps])]))
