"""Host↔device and device↔device copy bandwidth, and dense BF16 GEMM throughput, on every visible GPU.

    python workloads/gpu_bandwidth.py --bytes 512M --iters 20 --gemm-size 8192 --output bandwidth.json

Copies are timed as nvbandwidth times its copy-engine tests: one warm-up copy, then `iters` back-to-back
asynchronous copies on one stream between two CUDA events; bandwidth = bytes · iters / elapsed. Host buffers are
pinned. Device↔device runs for every ordered pair (source → destination). GEMM: TFLOPS = 2·n³ · iters / elapsed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workloads.allreduce import parse_size  # noqa: E402  (one size syntax for every workload)


def timed_copies(destination: torch.Tensor, source: torch.Tensor, stream: torch.cuda.Stream, iters: int) -> float:
    """Seconds for `iters` copies of `source` into `destination`, measured on `stream` with CUDA events."""
    with torch.cuda.stream(stream):
        destination.copy_(source, non_blocking=True)  # warm-up: peer mappings, copy-engine setup
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(iters):
            destination.copy_(source, non_blocking=True)
        end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


def host_device(index: int, size: int, iters: int) -> dict[str, float]:
    device = torch.device("cuda", index)
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    gpu = torch.empty(size, dtype=torch.uint8, device=device)
    stream = torch.cuda.Stream(device)
    with torch.cuda.device(device):
        h2d = timed_copies(gpu, host, stream, iters)
        d2h = timed_copies(host, gpu, stream, iters)
    return {"gpu": index, "h2d_gbps": size * iters / h2d / 1e9, "d2h_gbps": size * iters / d2h / 1e9}


def device_device(source: int, destination: int, size: int, iters: int) -> dict[str, float]:
    src = torch.empty(size, dtype=torch.uint8, device=torch.device("cuda", source))
    dst = torch.empty(size, dtype=torch.uint8, device=torch.device("cuda", destination))
    # the stream of the source device issues the copy, as nvbandwidth's device_to_device_memcpy_write_ce does
    stream = torch.cuda.Stream(torch.device("cuda", source))
    with torch.cuda.device(source):
        elapsed = timed_copies(dst, src, stream, iters)
    return {"source": source, "destination": destination, "gbps": size * iters / elapsed / 1e9,
            "peer_access": torch.cuda.can_device_access_peer(source, destination)}


def gemm(index: int, n: int, iters: int) -> dict[str, float]:
    device = torch.device("cuda", index)
    with torch.cuda.device(device):
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):  # warm-up: cuBLAS heuristics, clocks up
            torch.matmul(a, b, out=out)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
    seconds = start.elapsed_time(end) / 1000.0
    return {"gpu": index, "name": torch.cuda.get_device_name(device), "tflops": 2 * n**3 * iters / seconds / 1e12}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--gemm-size", type=int, default=8192)
    parser.add_argument("--gemm-iters", type=int, default=50)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 3
    count = torch.cuda.device_count()
    result = {
        "bytes": args.bytes, "iters": args.iters, "gemm_size": args.gemm_size, "gemm_iters": args.gemm_iters,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "host_device": [host_device(i, args.bytes, args.iters) for i in range(count)],
        "device_device": [device_device(s, d, args.bytes, args.iters)
                          for s in range(count) for d in range(count) if s != d],
        "gemm": [gemm(i, args.gemm_size, args.gemm_iters) for i in range(count)],
    }
    args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
