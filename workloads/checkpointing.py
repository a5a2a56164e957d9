"""Distributed checkpoints with `torch.distributed.checkpoint` (DCP), committed atomically.

Layout under the checkpoint root:

    step_00000012/            a complete checkpoint: DCP files, rng_rank<r>.pt, checksums_rank<r>.json, COMPLETE
    .partial-step_00000016/   a save in progress (or killed mid-save): never loaded, removed by the next save

A save writes everything into `.partial-step_N` and fsyncs it, waits for every rank, then rank 0 writes the
`COMPLETE` marker (training state, model config, checksum summary), fsyncs it and renames the directory to
`step_N`. The rename is atomic, so a kill at any moment leaves either the old set of checkpoints or the old set plus
the new one.

Every tensor's CRC-32 is recorded at save time and verified after load: a corrupted checkpoint raises
`CheckpointCorruptError` instead of being loaded silently. The CRC is taken inside DCP's write path (a planner
hook), by the rank that writes the tensor, on bytes that are about to be copied to the file anyway: replicated
(DDP) state is split across ranks by DCP, so each rank checksums only its share instead of the whole state.
Because of that, torch.save's own per-record CRC-32 inside the DCP files is switched off during the save: it was
a second pass over the same bytes (~20% of the save time measured here).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from zlib_ng import zlib_ng

from workloads.model import GPT, GPTConfig

MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step_(\d{8})$")
PARTIAL_PREFIX = ".partial-"


class CheckpointError(Exception):
    """The checkpoint root is unusable (not writable, nothing to load)."""


class CheckpointCorruptError(CheckpointError):
    """Loaded tensors do not match the checksums recorded when they were saved."""


@dataclass
class SaveStats:
    step: int
    path: Path
    bytes: int
    """Bytes of tensor data in the checkpoint (all ranks' files together)."""
    seconds: float
    """Wall time of the whole save on this rank: DCP write with fsync, checksums, commit (pruning excluded)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def ensure_writable(root: str | Path) -> Path:
    """Create the root if needed and prove it is writable; otherwise a CheckpointError naming the path."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"checkpoint directory {root} is not writable: {error.strerror or error}") from None
    return root


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint with a completion marker, oldest first; anything else is ignored."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and (entry / MARKER).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((path / MARKER).read_text())


def crc32_hex(tensor: torch.Tensor) -> str:
    """CRC-32 of a tensor's bytes.

    CRC-32 detects the accidental damage storage does (flipped bits, torn or truncated writes); SHA-256 runs at
    ~0.3-0.9 GB/s here and would dominate the checkpoint time. Nobody forges checkpoints. zlib-ng computes the same
    CRC-32 as zlib (same values, so older checkpoints still verify) at 4-5 GB/s instead of zlib's 0.8-1.3 GB/s
    on this machine: at zlib's speed the checksum pass cost as much as writing the bytes.
    """
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{zlib_ng.crc32(data):08x}"


def chunk_key(name: str, offsets: tuple[int, ...] | torch.Size, chunk_shape: tuple[int, ...] | torch.Size,
              full_shape: tuple[int, ...] | torch.Size) -> str:
    """Checksum key of one saved piece: the flattened name, plus the offsets when it is a shard of the tensor."""
    if tuple(chunk_shape) == tuple(full_shape):
        return name
    return f"{name}@{','.join(str(int(offset)) for offset in offsets)}"


def _local_key(name: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """(key, local data): a DTensor's local shard is keyed by its offsets in the global tensor."""
    if not hasattr(value, "to_local"):
        return name, value
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offsets = compute_local_shape_and_global_offset(value.shape, value.device_mesh, value.placements)
    return chunk_key(name, offsets, local_shape, value.shape), value.to_local()


def tensor_checksums(state: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """CRC-32 of every tensor's bytes (local shard for DTensors), keyed like `ChecksummingSavePlanner` keys them."""
    sums: dict[str, str] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            sums.update(tensor_checksums(value, f"{name}."))
        elif isinstance(value, torch.Tensor):
            local_name, local = _local_key(name, value)
            sums[local_name] = crc32_hex(local)
    return sums


class ChecksummingSavePlanner(DefaultSavePlanner):
    """DCP's default planner that also records the CRC-32 of every tensor piece this rank writes.

    DCP calls `resolve_data` just before it serializes a piece into this rank's file, so the checksum covers
    exactly the pieces the rank writes (after DCP's deduplication of replicated state), while they are hot in cache.
    """

    def __init__(self) -> None:
        super().__init__()
        self.checksums: dict[str, str] = {}
        """chunk_key -> CRC-32 hex of what this rank wrote."""

    def resolve_data(self, write_item):
        data = super().resolve_data(write_item)
        if isinstance(data, torch.Tensor) and write_item.tensor_data is not None:
            chunk = write_item.tensor_data.chunk
            key = chunk_key(write_item.index.fqn, chunk.offsets, chunk.sizes, write_item.tensor_data.size)
            self.checksums[key] = crc32_hex(data)
        return data


@contextmanager
def torch_save_crc_disabled():
    """Skip torch.save's per-record CRC-32 (restored afterwards): our own CRC already covers every tensor."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def state_nbytes(state: dict[str, Any]) -> int:
    total = 0
    for value in state.values():
        if isinstance(value, dict):
            total += state_nbytes(value)
        elif isinstance(value, torch.Tensor):
            local = value.to_local() if hasattr(value, "to_local") else value
            total += local.numel() * local.element_size()
    return total


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Write and fsync: everything the marker vouches for must be on storage before the marker is."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(root: str | Path, step: int, tensors: dict[str, Any], training_state: dict[str, Any],
                    model_config: GPTConfig, keep: int = 2, rng_state: dict[str, Any] | None = None) -> SaveStats:
    """Collective: every rank calls it with its state dict of tensors ({"model": ..., "optim": ...}).

    `training_state` (step, LR schedule, data position; identical on every rank) goes into the marker;
    `rng_state` is per rank. Keeps the newest `keep` complete checkpoints.
    """
    root = Path(root)
    rank = _rank()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    final = root / step_dir_name(step)
    partial = root / f"{PARTIAL_PREFIX}{step_dir_name(step)}"
    local_bytes = state_nbytes(tensors)
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)  # left by a save that was killed
    _barrier()
    started = time.perf_counter()
    planner = ChecksummingSavePlanner()
    with torch_save_crc_disabled():
        # Collective; creates the directory, fsyncs every data file and the metadata (sync_files defaults to True).
        dcp.save(tensors, checkpoint_id=partial, planner=planner)
    rng_buffer = io.BytesIO()
    torch.save(rng_state or {}, rng_buffer)
    _write_durably(partial / f"rng_rank{rank}.pt", rng_buffer.getvalue())
    _write_durably(partial / f"checksums_rank{rank}.json", json.dumps(planner.checksums).encode())
    _barrier()
    if rank == 0:
        marker = {"step": step, "world_size": world, "model_config": dataclasses.asdict(model_config),
                  "training_state": training_state, "tensors": sum(isinstance(v, torch.Tensor) for v in
                                                                   _leaves(tensors)), "saved_at": time.time()}
        _write_durably(partial / MARKER, json.dumps(marker).encode())
        _fsync_dir(partial)  # the directory entries of every file above
        if final.exists():  # the same step saved again (e.g. after a restart): replace it
            shutil.rmtree(final)
        os.rename(partial, final)
        _fsync_dir(root)
    _barrier()
    seconds = time.perf_counter() - started  # committed on every rank; pruning old ones is housekeeping
    if rank == 0:
        _prune(root, keep)
    total_bytes = local_bytes
    if dist.is_available() and dist.is_initialized():
        # Replicated (DDP) state is written once, so the checkpoint holds one copy: what rank 0 holds.
        # Sharded (FSDP) state is split across ranks, so the checkpoint holds the sum.
        sharded = any(hasattr(v, "to_local") for v in _leaves(tensors))
        if sharded:
            summed = torch.tensor([local_bytes], dtype=torch.float64)
            dist.all_reduce(summed)
            total_bytes = int(summed.item())
    return SaveStats(step=step, path=final, bytes=total_bytes, seconds=seconds)


def _leaves(state: dict[str, Any]):
    for value in state.values():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield value


def _prune(root: Path, keep: int) -> None:
    for _, path in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for entry in root.iterdir():
        if entry.name.startswith(PARTIAL_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


def load_checkpoint(path: Path, tensors: dict[str, Any], verify: bool = True) -> dict[str, Any]:
    """Collective: fill `tensors` in place from the checkpoint at `path`; returns this rank's RNG state.

    With `verify`, every loaded tensor's checksum is compared with the one recorded by the same rank at save time
    (when the world size is unchanged; otherwise rank 0's record, which covers all replicated state).
    """
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} has no {MARKER} marker: it is not a complete checkpoint")
    rank = _rank()
    try:
        dcp.load(tensors, checkpoint_id=path)
    except (Exception, CheckpointException) as error:  # truncated or garbled files fail inside DCP's reader
        cause = [line for line in str(error).splitlines() if "Error" in line] or str(error).splitlines() or [""]
        raise CheckpointCorruptError(f"checkpoint {path} could not be read: {cause[-1].strip()[:300]}") from None
    if verify:
        verify_checksums(path, tensors, rank)
    rng_file = path / f"rng_rank{rank}.pt"
    return torch.load(rng_file, weights_only=False) if rng_file.is_file() else {}


def verify_checksums(path: Path, tensors: dict[str, Any], rank: int = 0) -> None:
    """Every tensor (piece) this rank holds must match the CRC-32 recorded by whichever rank wrote it.

    Each rank records what it wrote, so the expected set is the union of all ranks' records. `rank` is kept for
    the callers' symmetry; every rank reads the same union.
    """
    expected: dict[str, str] = {}
    records = sorted(path.glob("checksums_rank*.json"))
    if not records:
        raise CheckpointCorruptError(f"checkpoint {path}: no checksum record (checksums_rank*.json)")
    for record in records:
        try:
            expected.update(json.loads(record.read_text()))
        except (OSError, ValueError) as error:
            raise CheckpointCorruptError(f"checkpoint {path}: checksum record {record.name} unreadable: {error}") \
                from None
    actual = tensor_checksums(tensors)
    mismatched = sorted(name for name, digest in actual.items() if name in expected and expected[name] != digest)
    missing = sorted(set(actual) - set(expected))
    if mismatched or missing:
        what = mismatched or missing
        raise CheckpointCorruptError(
            f"checkpoint {path}: {len(mismatched)} tensors differ from their saved checksums and {len(missing)} "
            f"have none (first: {what[0]})")


def load_for_inference(checkpoint_root: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, GPTConfig]:
    """The newest complete checkpoint's model, in one plain process (no process group), checksums verified."""
    found = latest_checkpoint(checkpoint_root)
    if found is None:
        raise CheckpointError(f"no complete checkpoint (step_*/{MARKER}) under {checkpoint_root}")
    _, path = found
    config = GPTConfig(**read_marker(path)["model_config"])
    model = GPT(config)
    tensors = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it runs without a process group: that is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_checkpoint(path, tensors)
    model.load_state_dict(tensors["model"])
    return model.to(device).eval(), config
