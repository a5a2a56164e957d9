"""`checkpoint`: how fast training state goes to and comes back from the checkpoint storage, intact.

save/load GB/s = checkpoint bytes / wall time (docs/metrics.md; median over rounds for the save), compared with a raw
sequential fsynced write of the same bytes to the same directory (both sides fsync their data and directory, each
timed after `os.sync()` and an untimed warm-up so neither pays for the other's write-back or for first-use costs;
see workloads/train_checkpoint_bench.py); integrity = a CRC-32 of every tensor, compared after the round trip; a
deliberately corrupted checkpoint must be refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import Field

from dcforge.checks._torchrun import ModelTorchCheckConfig, run_torchrun
from dcforge.checks.on_pool import run_check_on_pool
from dcforge.checks.train import settings_error
from dcforge.harness.check import CheckContext, runs_on_pool
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, Plot, Series
from workloads.records import CHECKPOINT_RESULT_FILE, CheckpointResult, read_result_file

BANDWIDTH_FORMULA = "GB/s = checkpoint bytes / wall time"


class CheckpointCheckConfig(ModelTorchCheckConfig):
    directory: str | None = None
    """Checkpoint directory on the storage under test (a mounted volume); default: the run's artefact dir."""
    preset: str = "125m"
    """Model whose state is saved (workloads.model.PRESETS; validated by the base class)."""
    with_optimizer: bool = True
    """Include AdamW state (3x the model's bytes), as a training checkpoint does."""
    rounds: int = Field(default=3, ge=1)
    """Save and raw-write rounds, order alternating; figures are medians over rounds."""
    corruption_test: bool = True
    """Corrupt the saved checkpoint at the end and require that loading it fails."""


class CheckpointCheck:
    name = "checkpoint"
    description = "DCP checkpoint save/load GB/s against a raw write to the same storage; checksums round trip."
    Config = CheckpointCheckConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/checks/on_pool.py)
    metrics = (
        MetricSpec("save_gbps", "GB/s", "higher", BANDWIDTH_FORMULA + " (save+commit), median over rounds",
                   "how fast training state is written to the checkpoint storage"),
        MetricSpec("load_gbps", "GB/s", "higher", BANDWIDTH_FORMULA + " (load, page cache dropped)",
                   "how fast training state is read back"),
        MetricSpec("raw_write_gbps", "GB/s", "higher",
                   BANDWIDTH_FORMULA + " (sequential write + fsync of file and directory, same bytes, same "
                                       "directory)",
                   "what the storage gives a plain sequential writer: the yardstick for save_gbps"),
        MetricSpec("save_ratio_to_raw", "ratio", "higher",
                   "median over rounds of save GB/s / raw write GB/s, measured back to back",
                   "share of the raw write bandwidth the checkpoint save achieves"),
        MetricSpec("checkpoint_gb", "GB", None, "bytes in the checkpoint's files / 1e9", "size of one checkpoint"),
        MetricSpec("checksum_match", "bool", "higher",
                   "every tensor's CRC-32 after load equals the one recorded at save",
                   "integrity: 1 when the round trip returned every tensor intact"),
        MetricSpec("corruption_detected", "bool", "higher", "loading a checkpoint with flipped bytes fails",
                   "integrity: 1 when a corrupted checkpoint is refused (reported when corruptionTest is on)"),
    )

    def run(self, ctx: CheckContext, config: CheckpointCheckConfig) -> CheckResult:
        if runs_on_pool(self, ctx.env.spec):  # target kubernetes: a machine of the acceptance pool
            return run_check_on_pool(ctx, self.name, config)
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


def checkpoint_args(config: CheckpointCheckConfig, directory: str, output: str) -> list[str]:
    """workloads/train_checkpoint_bench.py's arguments for these settings (paths may be executor templates)."""
    return ["--preset", config.preset, "--directory", directory, "--output", output, "--rounds", str(config.rounds),
            "--with-optimizer" if config.with_optimizer else "--no-with-optimizer",
            "--corruption-test" if config.corruption_test else "--no-corruption-test"]


def record_checkpoint(result: CheckResult, measured: CheckpointResult) -> None:
    """Metrics and integrity verdicts of one checkpoint benchmark (the checkpoint check's, and each node's)."""
    for key in ("save_gbps", "load_gbps", "raw_write_gbps", "save_ratio_to_raw"):
        result.add_metric(key, getattr(measured, key))
    result.add_metric("checkpoint_gb", measured.bytes / 1e9)
    result.add_metric("checksum_match", 1.0 if measured.checksum_match else 0.0)
    if not measured.checksum_match:
        result.fail("loaded tensors differ from their checksums recorded at save time")
    if measured.corruption_detected is not None:
        result.add_metric("corruption_detected", 1.0 if measured.corruption_detected else 0.0)
        if not measured.corruption_detected:
            result.fail("a corrupted checkpoint was loaded without an error")
