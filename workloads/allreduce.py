"""All-reduce bandwidth sweep, measured the way nccl-tests measures it, under torchrun.

    torchrun --nproc_per_node=2 workloads/allreduce.py --min-bytes 1K --max-bytes 1G --output sweep.json

Per message size: warm-up iterations, then timed iterations (CUDA events on GPU, a wall clock between barriers
on CPU); the slowest rank's mean time counts. algbw = bytes / t; busbw = algbw · 2(n−1)/n (docs/metrics.md#allreduce). A
separate all-reduce of a rank-dependent pattern checks the sum for every size.
"""

from __future__ import annotations

from dcforge.process_lifetime import die_with_torchrun_agent

# First, before torch loads for seconds: torchrun gives each worker a session of its own, so a SIGKILLed agent
# would leave it running; from here on the worker dies with the agent.
die_with_torchrun_agent()

import argparse
import os
import re
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from workloads.records import AllreduceResult, AllreduceRow, emit_result

SIZE_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
ALGBW_FORMULA = "algbw = bytes / t"
BUSBW_FORMULA = "busbw = algbw * 2(n-1)/n"


class SizeError(ValueError, argparse.ArgumentTypeError):
    """A bad size: a ValueError for settings validation, an ArgumentTypeError for argparse's message."""


def parse_size(text: str) -> int:
    """`1K`, `64M`, `1G` (binary units) or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise SizeError(f"bad size {text!r}: expected e.g. 1024, 1K, 64M, 1G")
    return int(match.group(1)) * SIZE_SUFFIXES[match.group(2).upper()]


def message_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    if min_bytes < 4 or max_bytes < min_bytes or factor < 2:
        raise ValueError(f"need 4 <= min_bytes <= max_bytes and factor >= 2 (got {min_bytes}, {max_bytes}, "
                         f"{factor})")
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def bus_bandwidth_factor(world_size: int) -> float:
    """nccl-tests' all-reduce correction: each rank sends and receives 2(n−1)/n of the buffer."""
    return 2 * (world_size - 1) / world_size


def _timed(tensor: torch.Tensor, iterations: int, device: torch.device) -> float:
    dist.barrier()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            dist.all_reduce(tensor)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / iterations
    started = time.perf_counter()
    for _ in range(iterations):
        dist.all_reduce(tensor)
    return (time.perf_counter() - started) / iterations


def _sum_is_correct(elements: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Rank r contributes (r+1)·(i mod 7 + 1): the sum is exactly n(n+1)/2·(i mod 7 + 1) in any float type."""
    world, rank = dist.get_world_size(), dist.get_rank()
    pattern = (torch.arange(elements, device=device) % 7 + 1).to(dtype)
    tensor = pattern * (rank + 1)
    dist.all_reduce(tensor)
    ok = torch.tensor([1.0 if torch.equal(tensor, pattern * (world * (world + 1) // 2)) else 0.0], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def sweep(sizes: list[int], warmup: int, iterations: int, dtype: torch.dtype,
          device: torch.device) -> list[AllreduceRow]:
    world = dist.get_world_size()
    element_size = torch.tensor([], dtype=dtype).element_size()
    results = []
    for size in sizes:
        elements = max(1, size // element_size)
        tensor = torch.zeros(elements, dtype=dtype, device=device)  # zeros stay zeros: no overflow over iterations
        for _ in range(warmup):
            dist.all_reduce(tensor)
        seconds = torch.tensor([_timed(tensor, iterations, device)], dtype=torch.float64, device=device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        nbytes = elements * element_size
        algbw = nbytes / seconds.item() / 1e9
        results.append(AllreduceRow(nbytes, elements, seconds.item(), algbw, algbw * bus_bandwidth_factor(world),
                                  _sum_is_correct(elements, dtype, device)))
        del tensor
    return results


def environment_record(device: torch.device) -> dict:
    record = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "device": device.type,
              "torch": torch.__version__,
              "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
              "gloo_env": {k: v for k, v in os.environ.items() if k.startswith("GLOO_")}}
    if device.type == "cuda":
        record["nccl_version"] = ".".join(str(part) for part in torch.cuda.nccl.version())
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def enable_nccl_info() -> None:
    """NCCL's INFO lines in this rank's log: the checks read from them which transport NCCL used
    (dcforge/nccl_transport.py). TRACE already includes INFO; a debug file would take the lines out of the log."""
    from dcforge.nccl_transport import NCCL_DEBUG_ENV

    if os.environ.get("NCCL_DEBUG", "").upper() != "TRACE":
        os.environ["NCCL_DEBUG"] = NCCL_DEBUG_ENV["NCCL_DEBUG"]
    os.environ.setdefault("NCCL_DEBUG_SUBSYS", NCCL_DEBUG_ENV["NCCL_DEBUG_SUBSYS"])
    os.environ.pop("NCCL_DEBUG_FILE", None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allreduce.py", description=__doc__.splitlines()[0])
    parser.add_argument("--min-bytes", type=parse_size, default=parse_size("1K"), help="smallest message (1K)")
    parser.add_argument("--max-bytes", type=parse_size, default=parse_size("1G"), help="largest message (1G)")
    parser.add_argument("--factor", type=int, default=2, help="size multiplier between steps (2)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations per size (5)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per size (20)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--output", help="also write the result line (an AllreduceResult) here (rank 0)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="collective timeout (120)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sizes = message_sizes(args.min_bytes, args.max_bytes, args.factor)
        if args.warmup < 5 or args.iters < 20:
            raise ValueError("nccl-tests' minimum is >= 5 warm-up and >= 20 timed iterations per size "
                             "(docs/metrics.md#allreduce)")
    except ValueError as error:
        print(f"allreduce.py: error: {error}", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        enable_nccl_info()
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=args.timeout_s))
    try:
        results = sweep(sizes, args.warmup, args.iters, getattr(torch, args.dtype), device)
        if dist.get_rank() == 0:
            print(f"{'bytes':>12} {'time_us':>10} {'algbw_GB/s':>11} {'busbw_GB/s':>11}  correct")
            for row in results:
                print(f"{row.bytes:12d} {row.time_s * 1e6:10.1f} {row.algbw_gbps:11.3f} {row.busbw_gbps:11.3f}  "
                      f"{row.correct}")
            emit_result(AllreduceResult(environment=environment_record(device), dtype=args.dtype, warmup=args.warmup,
                                        iterations=args.iters, formulas=[ALGBW_FORMULA, BUSBW_FORMULA],
                                        results=results), args.output)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
