"""The checkpoint step: how fast training state goes to and comes back from the checkpoint storage, intact.

save/load GB/s = checkpoint bytes / wall time (docs/metrics.md; median over rounds for the save), compared with a raw
sequential fsynced write of the same bytes to the same directory (both sides fsync their data and directory, each
timed after `os.sync()` and an untimed warm-up so neither pays for the other's write-back or for first-use costs;
see workloads/train_checkpoint_bench.py); integrity = a CRC-32 of every tensor, compared after the round trip; a
deliberately corrupted checkpoint must be refused.
"""

from __future__ import annotations


from pydantic import Field

from dcforge.executors.base import VolumePurpose
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult
from dcforge.steps.step import NODE_ENV, NODE_VOLUMES, RESULTS, Step, node_torchrun
from dcforge.steps.torchrun import ModelTorchCheckConfig
from workloads.records import CHECKPOINT_RESULT_FILE, CheckpointResult, read_result

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


CHECKPOINT_METRICS = (
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


def checkpoint_step(config: CheckpointCheckConfig, directory: str | None,
                    volumes: tuple[VolumePurpose, ...] = NODE_VOLUMES) -> Step:
    """`directory`: where the checkpoints go on the node (a template such as `{volume[checkpoints]}/...`);
    None: the node's scratch volume."""
    nproc = config.nproc()

    def judge(data: bytes) -> CheckResult:
        judged = CheckResult("checkpoint", declared=CHECKPOINT_METRICS)
        record_checkpoint(judged, read_result(data.decode().splitlines(), CheckpointResult))
        return judged

    args = checkpoint_args(config, directory or "{volume[scratch]}/checkpoint", f"{RESULTS}/{CHECKPOINT_RESULT_FILE}")
    return Step("checkpoint", node_torchrun("train_checkpoint_bench.py", args, nproc), CHECKPOINT_RESULT_FILE, judge,
                NODE_ENV, volumes)


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
