"""`checkpoint`: how fast training state goes to and comes back from the checkpoint storage, intact.

The settings, metrics and judge are the checkpoint step's (dcforge/steps/checkpoint.py, which says how save, load
and the raw write are timed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dcforge.harness.check import CheckContext, settings_error
from dcforge.harness.result import CheckResult, Plot, Series
from dcforge.placement.pool import on_a_pool_machine
from dcforge.placement.scope import single_node
from dcforge.steps.checkpoint import (CHECKPOINT_METRICS, CheckpointCheckConfig, checkpoint_args, checkpoint_step,
                                      record_checkpoint)
from dcforge.steps.step import CLAIM_VOLUMES
from dcforge.steps.torchrun import run_torchrun
from workloads.records import CHECKPOINT_RESULT_FILE, CheckpointResult, read_result_file


class CheckpointCheck:
    name = "checkpoint"
    description = "DCP checkpoint save/load GB/s against a raw write to the same storage; checksums round trip."
    Config = CheckpointCheckConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/placement/pool.py)
    metrics = CHECKPOINT_METRICS

    def run(self, ctx: CheckContext, config: CheckpointCheckConfig) -> CheckResult:
        return single_node(ctx, self, here=lambda: self.here(ctx, config), pool=lambda: self._on_pool(ctx, config))

    def _on_pool(self, ctx: CheckContext, config: CheckpointCheckConfig) -> CheckResult:
        """On a machine of the acceptance pool, writing to a claim of the checkpoints StorageClass."""
        if config.directory:
            raise settings_error(ctx, self.name, "directory", "target kubernetes writes the checkpoints to a "
                                 "claim of the spec's checkpoints StorageClass (purpose: checkpoints); remove "
                                 "directory")
        return on_a_pool_machine(ctx, self.name, lambda ranked: checkpoint_step(
            ranked, "{volume[checkpoints]}/checkpoint", CLAIM_VOLUMES), config)

    def here(self, ctx: CheckContext, config: CheckpointCheckConfig) -> CheckResult:
        from workloads.checkpointing import CheckpointError, ensure_writable

        result = CheckResult(self.name, declared=self.metrics)
        nproc = config.nproc()
        workdir = ctx.artefact_dir(self.name)
        directory = Path(config.directory) if config.directory else workdir / "checkpoints"
        try:
            ensure_writable(directory)
        except CheckpointError as error:
            raise settings_error(ctx, self.name, "directory", str(error)) from None
        output = workdir / CHECKPOINT_RESULT_FILE
        args = checkpoint_args(config, str(directory), str(output))
        try:
            run_torchrun(ctx, "train_checkpoint_bench.py", args, nproc=nproc, log_path=workdir / "torchrun.log")
            measured = read_result_file(output, CheckpointResult)
        finally:
            if not config.directory:  # our own scratch copy: gigabytes that nobody will read
                import shutil

                shutil.rmtree(directory, ignore_errors=True)
        result.artefacts["result"] = ctx.relative(output)
        result.artefacts["torchrun_log"] = ctx.relative(workdir / "torchrun.log")
        record_checkpoint(result, measured)
        result.details = {**dataclasses.asdict(measured), "nproc": nproc}
        result.plots.append(Plot("Checkpoint bandwidth", "operation", "GB/s",
                                 [Series("GB/s", [0.0, 1.0, 2.0], [measured.save_gbps, measured.load_gbps,
                                                                   measured.raw_write_gbps])],
                                 kind="bar", markers=[{"x": 0.0, "label": "DCP save"},
                                                      {"x": 1.0, "label": "DCP load"},
                                                      {"x": 2.0, "label": "raw write"}]))
        return result


