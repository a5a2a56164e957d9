"""`train`: can this machine (or node) train? Tokens/s, step time, MFU and a falling loss, from a real torchrun.

The settings, metrics, formulas and judge are the train step's (dcforge/steps/train.py); this check runs it here,
or on a machine of the acceptance pool on target kubernetes (dcforge/placement/pool.py).
"""

from __future__ import annotations

from dcforge.harness.check import CheckContext
from dcforge.harness.power import JOULES_PER_TOKEN, record_energy, sample_power
from dcforge.harness.result import CheckResult
from dcforge.placement.scope import single_node
from dcforge.placement.pool import on_a_pool_machine
from dcforge.steps.torchrun import cpu_peak_per_rank, run_torchrun
from dcforge.steps.train import TRAIN_METRICS, TrainCheckConfig, summarize, train_config, train_step, validated
from workloads.records import TRAIN_METRICS_FILE, TrainStep, read_records_file


class TrainCheck:
    name = "train"
    description = "Trains the bundled GPT with torchrun: tokens/s, step time, MFU, loss goes down."
    Config = TrainCheckConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/placement/pool.py)
    metrics = TRAIN_METRICS
    outputs = ("trained_checkpoint_dir",)

    def run(self, ctx: CheckContext, config: TrainCheckConfig) -> CheckResult:
        return single_node(ctx, self, here=lambda: self.here(ctx, config),
                           pool=lambda: on_a_pool_machine(
                               ctx, self.name, lambda ranked: train_step(ctx, ranked, None, self.name), config))

    def here(self, ctx: CheckContext, config: TrainCheckConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        nproc = config.nproc()
        workdir = ctx.artefact_dir(self.name)
        metrics_file, checkpoint_dir = workdir / TRAIN_METRICS_FILE, workdir / "checkpoints"
        metrics_file.unlink(missing_ok=True)
        peak = None
        import torch

        if not torch.cuda.is_available():
            peak = cpu_peak_per_rank(ctx, nproc)
        workload = validated(ctx, self.name, train_config(config, str(metrics_file), str(checkpoint_dir),
                                                          peak_flops=peak), nproc)
        with sample_power() as power:
            run_torchrun(ctx, "train.py", workload.to_args(), nproc=nproc, log_path=workdir / "torchrun.log")
        record_energy(result, power, work=config.steps * config.global_batch_size * config.seq_len,
                      work_metric=JOULES_PER_TOKEN)  # whole torchrun / tokens trained
        result.artefacts["metrics"] = ctx.relative(metrics_file)
        result.artefacts["torchrun_log"] = ctx.relative(workdir / "torchrun.log")
        ctx.outputs.trained_checkpoint_dir = checkpoint_dir  # later checks may serve what was trained
        summarize(result, read_records_file(metrics_file, TrainStep), config, nproc, peak)
        return result
