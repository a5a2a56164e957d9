"""`checkpoint_backup`: the last complete training checkpoint survives the loss of its storage.

The newest complete checkpoint the `train` check wrote in this run is copied to a backup store (a second directory
— another volume or storage class — or an S3-compatible bucket), restored from there to a clean directory, and
judged: the sha256 of every file equals the source's, every model tensor's CRC-32 recorded at save time matches
after a load, and training resumes from the restored copy (a one-rank torchrun whose resume verifies every model
and optimizer tensor's checksum) at the checkpoint's step. A deliberately corrupted backup must be caught.

copy / restore GB/s = checkpoint bytes / wall time of the copy to / from the store (files fsynced on a directory
store). Metrics: `backup_gb`, `copy_gbps`, `restore_gbps`, `files_match`, `tensor_checksums_match`,
`resume_step`, `resume_step_matches`, `corruption_detected`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, CheckSkipped

BANDWIDTH_FORMULA = "GB/s = checkpoint bytes / wall time"


class CheckpointBackupConfig(CheckConfig):
    target: Literal["directory", "s3"] = "directory"
    """Backup store kind."""
    directory: str | None = None
    """Backup directory (target directory); default: a temporary directory, removed afterwards."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (Ceph RGW, MinIO, ...); default: AWS. Credentials: boto3's usual chain."""
    s3_bucket: str | None = None
    s3_prefix: str = "dcforge-backups"
    s3_region: str = "us-east-1"
    keep_backup: bool = False
    """Leave the backup in the store (default: removed at the end of the check)."""
    resume_steps: int = Field(default=2, ge=1)
    """Training steps run after resuming from the restored copy."""
    corruption_test: bool = True
    """Flip bytes in the stored backup and require that the restore is caught."""

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> "CheckpointBackupConfig":
        if self.target == "s3" and not self.s3_bucket:
            raise ValueError("target s3 needs s3Bucket")
        return self


def flip_bytes(path: Path, offset: int = 64, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    start = min(offset, max(0, len(data) - count))
    for index in range(start, min(len(data), start + count)):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


class CheckpointBackupCheck:
    name = "checkpoint_backup"
    description = "Backs up the last complete checkpoint, restores it to a clean place, verifies it, resumes from it."
    Config = CheckpointBackupConfig
    metrics = (
        MetricSpec("backup_gb", "GB", None, "bytes of the checkpoint's files / 1e9", "size of the backup"),
        MetricSpec("copy_gbps", "GB/s", "higher", BANDWIDTH_FORMULA + " (to the store, fsynced on a directory)",
                   "how fast a checkpoint reaches the backup store"),
        MetricSpec("restore_gbps", "GB/s", "higher", BANDWIDTH_FORMULA + " (from the store to a clean directory)",
                   "how fast a checkpoint comes back from the backup store"),
        MetricSpec("files_match", "bool", "higher", "sha256 of every restored file equals the source's",
                   "integrity of the restored copy: must be 1"),
        MetricSpec("tensor_checksums_match", "bool", "higher",
                   "every model tensor's CRC-32 after loading the restored copy equals the one saved",
                   "the restored model is the trained one: must be 1"),
        MetricSpec("resume_step", "step", None, "step the run resumed from the restored copy continued from "
                   "(-1: it started from scratch)", "where training picked up from the backup"),
        MetricSpec("resume_step_matches", "bool", "higher",
                   "resumed at the backed-up step and trained every step after it",
                   "training continues from the backup: must be 1"),
        MetricSpec("corruption_detected", "bool", "higher",
                   "a backup with flipped bytes is caught by the file digests after restore",
                   "a damaged backup is never restored silently: must be 1"),
    )
    requires_declared_gpus = True

    def run(self, ctx: CheckContext, config: CheckpointBackupConfig) -> CheckResult:
        from workloads.checkpointing import latest_checkpoint

        trained = ctx.outputs.require("trained_checkpoint_dir")  # skipped, naming `train`, when it wrote none
        found = latest_checkpoint(trained)
        if found is None:
            raise CheckSkipped(f"no complete checkpoint under {trained} (the train check did not finish one)")
        step, source = found
        result = CheckResult(self.name, declared=self.metrics)
        workdir = ctx.artefact_dir(self.name)
        with tempfile.TemporaryDirectory(prefix="dcforge-backup-") as scratch:
            store = self._store(config, Path(scratch) / "store")
            key = f"{ctx.env.spec.name}/{ctx.report_dir.name}/{source.name}"
            result.details.update(store=store.description, key=key, source=str(source), step=step)
            try:
                self._round_trip(ctx, config, result, store, key, source, step, Path(scratch), workdir)
            finally:
                if not config.keep_backup:
                    store.delete(key)
        return result

    def _store(self, config: CheckpointBackupConfig, default_root: Path):
        from dcforge.backup import DirectoryStore, S3Location, S3Store

        if config.target == "s3":
            return S3Store(S3Location(config.s3_endpoint_url, str(config.s3_bucket), config.s3_prefix,
                                      config.s3_region))
        return DirectoryStore(Path(config.directory) if config.directory else default_root)

    def _round_trip(self, ctx: CheckContext, config: CheckpointBackupConfig, result: CheckResult, store, key: str,
                    source: Path, step: int, scratch: Path, workdir: Path) -> None:
        from dcforge.backup import file_digests

        digests = file_digests(source)
        ctx.log(f"backing up step {step} ({len(digests)} files) to {store.description}")
        started = time.perf_counter()
        copied = store.put(source, key)
        copy_s = time.perf_counter() - started
        restore_root = scratch / "restored"
        restored = restore_root / source.name
        started = time.perf_counter()
        restored_bytes = store.get(key, restored)
        restore_s = time.perf_counter() - started
        result.add_metric("backup_gb", copied / 1e9)
        result.add_metric("copy_gbps", copied / 1e9 / copy_s)
        result.add_metric("restore_gbps", restored_bytes / 1e9 / restore_s)

        differing = self._differences(digests, file_digests(restored))
        result.add_metric("files_match", float(not differing))
        if differing:
            result.fail(f"restored backup differs from the checkpoint: {', '.join(differing[:3])}")
        self._verify_tensors(result, restore_root)
        self._resume(ctx, config, result, restore_root, step, workdir)
        if config.corruption_test:
            self._corruption(result, store, key, restored, digests, scratch)

    @staticmethod
    def _differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
        return [f"{name} {'missing' if name not in actual else 'unexpected' if name not in expected else 'changed'}"
                for name in sorted(expected.keys() | actual.keys()) if expected.get(name) != actual.get(name)]

    @staticmethod
    def _verify_tensors(result: CheckResult, restore_root: Path) -> None:
        from workloads.checkpointing import CheckpointError, load_for_inference

        try:
            load_for_inference(restore_root)  # raises when a model tensor's CRC-32 differs from the save's
            ok = True
        except CheckpointError as error:
            ok = False
            result.fail(f"restored model tensors fail their checksums: {error}")
        result.add_metric("tensor_checksums_match", float(ok))

    def _resume(self, ctx: CheckContext, config: CheckpointBackupConfig, result: CheckResult, restore_root: Path,
                step: int, workdir: Path) -> None:
        from dcforge.steps.torchrun import run_torchrun
        from dcforge.steps.train import workload_config
        from workloads.records import TrainStart, TrainStep, read_records_file

        trained = ctx.results["train"].details
        metrics_file = workdir / "resume-metrics.jsonl"
        metrics_file.unlink(missing_ok=True)
        train_config = workload_config(trained["preset"], trained["seq_len"], trained["global_batch_size"],
                                       step + config.resume_steps, metrics_file=str(metrics_file),
                                       checkpoint_dir=str(restore_root), checkpoint_every=step + config.resume_steps,
                                       keep_checkpoints=2, resume=True, log_every=1)
        ctx.log(f"resuming training from the restored step {step}")
        run_torchrun(ctx, "train.py", train_config.to_args(), nproc=1, log_path=workdir / "resume-torchrun.log")
        result.artefacts["resume_metrics"] = ctx.relative(metrics_file)
        result.artefacts["resume_torchrun_log"] = ctx.relative(workdir / "resume-torchrun.log")
        starts = read_records_file(metrics_file, TrainStart)
        resumed = starts[0].resumed_from_step if starts else None
        trained_steps = read_records_file(metrics_file, TrainStep)
        result.add_metric("resume_step", float(resumed if resumed is not None else -1))
        matches = resumed == step and len(trained_steps) == config.resume_steps
        result.add_metric("resume_step_matches", float(matches))
        if not matches:
            result.fail(f"resume from the restored copy: started at step {resumed}, {len(trained_steps)} steps "
                        f"trained (expected step {step} and {config.resume_steps} steps)")

    def _corruption(self, result: CheckResult, store, key: str, restored: Path, digests: dict[str, str],
                    scratch: Path) -> None:
        from dcforge.backup import checkpoint_files, file_digests

        tampered = scratch / "tampered" / restored.name
        shutil.copytree(restored, tampered)
        victim = max(checkpoint_files(tampered), key=lambda p: p.stat().st_size)  # a tensor data file
        flip_bytes(victim)
        store.put(tampered, key)  # the stored backup now holds the flipped bytes
        again = scratch / "restored-again" / restored.name
        store.get(key, again)
        caught = bool(self._differences(digests, file_digests(again)))
        result.add_metric("corruption_detected", float(caught))
        result.details["corrupted_file"] = victim.relative_to(tampered).as_posix()
        if not caught:
            result.fail(f"a corrupted backup ({victim.name}) restored without any digest mismatch")
