"""`train`: can this machine (or node) train? Tokens/s, step time, MFU and a falling loss, from a real torchrun.

Formulas (docs/metrics.md#train): tokens/s per device = tokens since the last log / (Δt · devices); MFU =
flops_per_token · tokens/s / peak, flops_per_token = 6·N_non_embedding + 6·L·H·Q·T (torchtitan); peak is the GPU
table's dense BF16 figure on GPUs and a measured fp32 matmul peak of one rank's cores on CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field
from pydantic.alias_generators import to_camel

from dcforge.checks._torchrun import (MATMUL_PEAK_FORMULA, ModelTorchCheckConfig, cpu_peak_per_rank, percentile,
                                      run_torchrun)
from dcforge.checks.on_pool import run_check_on_pool
from dcforge.errors import ConfigError
from dcforge.harness.check import CheckContext, runs_on_pool
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.power import ENERGY_METRICS, JOULES_PER_TOKEN, record_energy, sample_power
from dcforge.harness.result import CheckResult, Plot, Series
from workloads.records import TRAIN_METRICS_FILE, TrainStep, read_records_file

if TYPE_CHECKING:  # workloads import torch: only when a check runs
    from workloads.train_config import TrainConfigError


def settings_error(ctx: CheckContext, check: str, key: str, message: str) -> ConfigError:
    return ConfigError(ctx.env.path, f"dcforge:acceptance.settings.{check}.{key}", message)


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


class TrainCheck:
    name = "train"
    description = "Trains the bundled GPT with torchrun: tokens/s, step time, MFU, loss goes down."
    Config = TrainCheckConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/checks/on_pool.py)
    metrics = (
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
    outputs = ("trained_checkpoint_dir",)

    def run(self, ctx: CheckContext, config: TrainCheckConfig) -> CheckResult:
        if runs_on_pool(self, ctx.env.spec):  # target kubernetes: a machine of the acceptance pool
            return run_check_on_pool(ctx, self.name, config)
        from workloads.train_config import TrainConfig, TrainConfigError

        result = CheckResult(self.name, declared=self.metrics)
        nproc = config.nproc()
        workdir = ctx.artefact_dir(self.name)
        metrics_file, checkpoint_dir = workdir / TRAIN_METRICS_FILE, workdir / "checkpoints"
        metrics_file.unlink(missing_ok=True)
        peak = None
        import torch

        if not torch.cuda.is_available():
            peak = cpu_peak_per_rank(ctx, nproc)
        train_config = TrainConfig(preset=config.preset, seq_len=config.seq_len,
                                   global_batch_size=config.global_batch_size, steps=config.steps,
                                   parallelism=config.parallelism, compile=config.compile,
                                   metrics_file=str(metrics_file), checkpoint_dir=str(checkpoint_dir),
                                   checkpoint_every=config.steps, keep_checkpoints=1, resume=False,
                                   peak_flops=peak, log_every=5)
        try:
            train_config.validate(nproc)
        except TrainConfigError as error:
            raise train_config_error(ctx, self.name, error) from None
        with sample_power() as power:
            run_torchrun(ctx, "train.py", train_config.to_args(), nproc=nproc, log_path=workdir / "torchrun.log")
        record_energy(result, power, work=config.steps * config.global_batch_size * config.seq_len,
                      work_metric=JOULES_PER_TOKEN)  # whole torchrun / tokens trained
        result.artefacts["metrics"] = ctx.relative(metrics_file)
        result.artefacts["torchrun_log"] = ctx.relative(workdir / "torchrun.log")
        ctx.outputs.trained_checkpoint_dir = checkpoint_dir  # later checks may serve what was trained
        summarize(result, read_records_file(metrics_file, TrainStep), config, nproc, peak)
        return result


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
