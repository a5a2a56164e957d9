"""Checkpoint save/load speed and integrity under torchrun, with a raw sequential write as the yardstick.

    torchrun --nproc_per_node=2 workloads/train_checkpoint_bench.py --preset 125m --directory /mnt/ckpt --output r.json

Each rank holds a DDP-style replica of the model (and AdamW state); the save goes through the same atomic DCP
commit as training (per-tensor CRC-32, fsync of every file, marker, rename). The yardstick, on the same directory:
every rank writes as many raw bytes as it wrote to the checkpoint, sequentially, then fsyncs the file and its
directory (the best the storage can do for one durable file). Both sides do the same durability work on the data
(the file and its directory entry are on storage before the time stops); the save additionally pays its commit
(small fsynced files, the marker, the rename, barriers), which is part of its cost. Each side gets one untimed
warm-up operation first.

Fairness: before each timed operation every rank runs `os.sync()` and a barrier, so neither side pays for the
other's deferred write-back or for block discards of files deleted earlier (ext4 `discard` runs them at the next
journal commit, i.e. inside somebody's fsync). Rounds alternate the order; the reported ratio is the median of
the per-round ratios, the GB/s figures use median times. Pages are dropped from the page cache before anything is
read back, so loads come from the storage. Finally one checkpoint file is corrupted and the load must refuse it.
"""

from __future__ import annotations

from dcforge.process_lifetime import die_with_torchrun_agent

# First, before torch loads for seconds: torchrun gives each worker a session of its own, so a SIGKILLed agent
# would leave it running; from here on the worker dies with the agent.
die_with_torchrun_agent()

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict

from workloads.checkpointing import (CheckpointCorruptError, CheckpointError, SaveStats, ensure_writable,
                                     load_checkpoint, save_checkpoint, tensor_checksums, verify_checksums)
from workloads.model import GPT, GPTConfig, get_preset
from workloads.records import CheckpointResult, emit_result

RAW_CHUNK = 16 * 2**20


def drop_page_cache(path: Path) -> None:
    """Evict a file's (already fsynced) pages, so the next read measures the storage, not memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def raw_sequential_write(path: Path, nbytes: int) -> float:
    """Seconds to write nbytes sequentially in 16 MiB chunks, fsync the file and its directory: the storage's own
    speed for a durable file (a new file's directory entry is only durable once its directory is fsynced, and the
    save fsyncs its directories too)."""
    chunk = os.urandom(min(RAW_CHUNK, nbytes)) if nbytes else b""
    started = time.perf_counter()
    with open(path, "wb") as handle:
        remaining = nbytes
        while remaining > 0:
            remaining -= handle.write(chunk[:remaining])
        handle.flush()
        os.fsync(handle.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return time.perf_counter() - started


def empty_like_state(state):
    if isinstance(state, dict):
        return {key: empty_like_state(value) for key, value in state.items()}
    if isinstance(state, list):
        return [empty_like_state(value) for value in state]
    return torch.zeros_like(state) if isinstance(state, torch.Tensor) else state


def settle() -> None:
    """Flush everything pending (dirty pages, discards of deleted files) on every rank, then start together."""
    os.sync()
    dist.barrier()


def slowest(seconds: float) -> float:
    """A collective operation takes as long as its slowest rank."""
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def rank_file_bytes(directory: Path, rank: int) -> int:
    """Bytes this rank wrote into the checkpoint (DCP names data files __<rank>_<n>.distcp)."""
    return sum(f.stat().st_size for f in directory.glob(f"__{rank}_*.distcp"))


def training_tensors(config: GPTConfig, with_optimizer: bool) -> dict:
    """The model's state (and AdamW's, after one real step), as a training checkpoint holds it."""
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters())
    if with_optimizer:
        model.loss(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)).backward()
        optimizer.step()  # real moments, not zeros: checksums must see distinct data
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, **({"optim": optim_state} if with_optimizer else {})}


def timed_rounds(root: Path, tensors: dict, config: GPTConfig, rounds: int, my_bytes: int,
                 first: SaveStats) -> tuple[SaveStats, list[float], list[float]]:
    """`rounds` saves and as many raw writes of this rank's bytes, the order alternating; returns the last save
    (`first`, the untimed one, when there are no rounds) and the slowest rank's seconds of each save and each raw
    write.

    Storage speed drifts (shared disks, write-back caches): alternating the order lets both sides of the ratio see
    the same conditions.
    """
    save_times: list[float] = []
    raw_times: list[float] = []
    raw_file = root / f"raw-write-rank{dist.get_rank()}.bin"
    # The raw side's warm-up, untimed like the save's: first-touch costs of a new file of this size (page-cache
    # allocation, block allocation on a fresh filesystem area) belong to neither side.
    settle()
    raw_sequential_write(raw_file, my_bytes)
    drop_page_cache(raw_file)
    raw_file.unlink()
    saved = first
    for round_index in range(rounds):
        for action in (("save", "raw") if round_index % 2 == 0 else ("raw", "save")):
            settle()
            if action == "save":
                saved = save_checkpoint(root, round_index + 1, tensors, {"step": round_index + 1}, config, keep=1,
                                        rng_state={})
                save_times.append(slowest(saved.seconds))
                for path in saved.path.iterdir():
                    drop_page_cache(path)
            else:
                raw_times.append(slowest(raw_sequential_write(raw_file, my_bytes)))
                drop_page_cache(raw_file)
                raw_file.unlink()
    return saved, save_times, raw_times


def timed_load_and_verify(path: Path, tensors: dict, rank: int) -> tuple[float, float, bool]:
    """Load seconds (slowest rank), this rank's checksum verification seconds, and whether every rank's tensors
    matched their checksums."""
    target = empty_like_state(tensors)
    dist.barrier()
    started = time.perf_counter()
    load_checkpoint(path, target, verify=False)
    load_s = slowest(time.perf_counter() - started)
    started = time.perf_counter()
    checksum_ok = True
    try:
        verify_checksums(path, target, rank)
    except CheckpointCorruptError:
        checksum_ok = False
    verify_s = time.perf_counter() - started
    return load_s, verify_s, slowest(0.0 if checksum_ok else 1.0) == 0.0


def run(args: argparse.Namespace) -> CheckpointResult:
    rank = dist.get_rank()
    root = Path(args.directory)
    config = get_preset(args.preset, max_seq_len=args.seq_len)
    tensors = training_tensors(config, args.with_optimizer)
    # An untimed first save: DCP's first call pays one-off costs (planner, thread pool, imports) that a storage
    # measurement should not include; it also tells each rank its share of the bytes.
    first = save_checkpoint(root, 0, tensors, {"step": 0}, config, keep=1, rng_state={})
    my_bytes = rank_file_bytes(first.path, rank)
    for path in first.path.iterdir():  # as after every timed save: its page-cache pages are free again
        drop_page_cache(path)
    saved, save_times, raw_times = timed_rounds(root, tensors, config, args.rounds, my_bytes, first)
    raw_total = torch.tensor([my_bytes], dtype=torch.float64)
    dist.all_reduce(raw_total)
    load_s, verify_s, checksum_ok = timed_load_and_verify(saved.path, tensors, rank)
    corruption_detected = corrupt_and_reload(saved.path, tensors, rank) if args.corruption_test else None
    total = int(raw_total.item())
    save_s, raw_s = statistics.median(save_times), statistics.median(raw_times)
    return CheckpointResult(
        preset=args.preset, with_optimizer=args.with_optimizer, world_size=dist.get_world_size(), bytes=total,
        tensor_bytes_per_replica=saved.bytes, tensors=len(tensor_checksums(tensors)), rounds=args.rounds,
        save_s=save_s, load_s=load_s, raw_write_s=raw_s, verify_s=verify_s, save_times_s=save_times,
        raw_write_times_s=raw_times, save_gbps=total / save_s / 1e9, load_gbps=total / load_s / 1e9,
        raw_write_gbps=total / raw_s / 1e9, save_ratio_to_raw=median_ratio(raw_times, save_times),
        checksum_match=checksum_ok, corruption_detected=corruption_detected, directory=str(root))


def median_ratio(raw_times: list[float], save_times: list[float]) -> float:
    """Median over rounds of (raw write time / save time) = save GB/s / raw GB/s for the same bytes."""
    return statistics.median(raw / save for raw, save in zip(raw_times, save_times, strict=True))


def corrupt_and_reload(path: Path, tensors: dict, rank: int) -> bool:
    """Flip bytes in the middle of the largest data file; every rank must then refuse to load."""
    if rank == 0:
        victim = max(path.glob("*.distcp"), key=lambda f: f.stat().st_size)
        with open(victim, "r+b") as handle:
            handle.seek(victim.stat().st_size // 2)
            data = handle.read(64)
            handle.seek(victim.stat().st_size // 2)
            handle.write(bytes(b ^ 0xFF for b in data))
    dist.barrier()
    detected = False
    try:
        load_checkpoint(path, empty_like_state(tensors))
    except CheckpointCorruptError:
        detected = True
    return slowest(0.0 if detected else 1.0) == 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train_checkpoint_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--seq-len", type=int, default=256, help="position-embedding rows to include (256)")
    parser.add_argument("--with-optimizer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--directory", required=True, help="checkpoint directory (on the storage under test)")
    parser.add_argument("--output", help="also write the result line (a CheckpointResult) here (rank 0)")
    parser.add_argument("--rounds", type=int, default=3, help="save + raw write rounds, order alternating (3)")
    parser.add_argument("--corruption-test", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    try:
        get_preset(args.preset)
        ensure_writable(args.directory)
    except (ValueError, CheckpointError) as error:
        print(f"train_checkpoint_bench.py: error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        result = run(args)
        if dist.get_rank() == 0:
            emit_result(result, args.output)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
