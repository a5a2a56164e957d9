"""Serving efficiency and batching speedup of the bundled server, measured side by side in one run.

- efficiency = server output tokens/s at saturation / raw batched decode tokens/s of the same model and batch
  size in one process (goal >= 0.85): what HTTP, SSE, asyncio and the scheduler cost. Saturation = twice as
  many closed-loop streams as batch slots, so a queued request takes every freed slot at the next step, as the
  raw loop keeps all its rows busy (with exactly as many streams as slots, a slot idles for the client's round
  trip after every answer); the efficiency at 32 streams is printed too;
- batching speedup = output tokens/s with 32 concurrent streams at max_batch 32 / the same at max_batch 1
  (goal >= 4x).

One replica with one torch thread, so the client (this process) has the other core. Each figure is measured in
several rounds (raw, saturated server, batched server, unbatched server, one after the other) and every ratio pairs the runs of one
round; the median and range over rounds are printed. Besides tokens/s (what the goals are about, and what swings
with other processes on the machine) the same ratios are printed per CPU second of the process doing the work
(this process for the raw loop, the server's worker process for the server), which other load barely moves.

    python -m benchmarks.inference_serving [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from benchmarks.inference_loadgen import process_cpu_s, summary
from dcforge.checks.serving.server import child_pids, free_port
from dcforge.harness.processes import ManagedProcess
from dcforge.paths import REPO_ROOT
from workloads.model import GPT, KVCache, get_preset

PRESET = "tiny"
PROMPT_TOKENS = 32
MAX_TOKENS = 64
STREAMS = 32
SATURATION_STREAMS = 2 * STREAMS
DURATION_S = 12.0
KEY = "benchmark-key"


def raw_decode_tokens_per_s(batch: int, duration_s: float = 6.0) -> tuple[float, float]:
    """The best one process does with the model: prefill `batch` prompts in one forward, then decode MAX_TOKENS
    steps for all of them in lock step (every step attends over the same, shortest possible prefix), repeatedly.
    Same model, threads, cache size (the server's context) and token counts as the server.
    Returns (output tokens/s, output tokens per CPU second)."""
    torch.set_num_threads(1)
    config = get_preset(PRESET)
    torch.manual_seed(0)
    model = GPT(config).eval()
    cache = KVCache(config, batch, config.max_seq_len)
    slots = torch.arange(batch)
    tokens, started, cpu_started = 0, time.perf_counter(), time.process_time()
    with torch.inference_mode():
        while time.perf_counter() - started < duration_s:
            # Like the server: the prefill yields the first output token, MAX_TOKENS - 1 decode steps the rest.
            logits = model(torch.randint(0, 256, (batch, PROMPT_TOKENS)), cache=cache, slots=slots,
                           positions=torch.arange(PROMPT_TOKENS).expand(batch, PROMPT_TOKENS))
            next_tokens = torch.argmax(logits[:, -1], dim=-1, keepdim=True)
            for step in range(MAX_TOKENS - 1):
                logits = model(next_tokens, cache=cache, slots=slots,
                               positions=torch.full((batch, 1), PROMPT_TOKENS + step))
                next_tokens = torch.argmax(logits[:, -1], dim=-1, keepdim=True)
            tokens += batch * MAX_TOKENS
    return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu_started)


async def _stream_loop(client: httpx.AsyncClient, deadline: float, counts: list[int]) -> None:
    body = {"model": "dcforge-gpt", "prompt": "x" * (PROMPT_TOKENS - 1), "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0}
    marker = b'"usage"'
    while time.perf_counter() < deadline:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            # The client shares the 2 cores with the server, so it does the least work that still proves every
            # stream completed: raw bytes scanned for the usage chunk (across a chunk boundary too), no line
            # splitting or JSON. A stream that ends without it (an error) is not counted.
            tail = b""  # too short to hold the whole marker: a marker seen in it is split across two chunks
            async for data in response.aiter_raw():
                if marker in data or marker in tail + data[:len(marker) - 1]:
                    counts.append(MAX_TOKENS)
                tail = data[-(len(marker) - 1):]


async def _drive(base_url: str, streams: int, duration_s: float, worker_pid: int) -> tuple[float, float, float]:
    counts: list[int] = []
    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        await asyncio.gather(*(_stream_loop(client, time.perf_counter() + 2.0, []) for _ in range(4)))  # warm-up
        started, worker_cpu, client_cpu = time.perf_counter(), process_cpu_s(worker_pid), time.process_time()
        await asyncio.gather(*(_stream_loop(client, started + duration_s, counts) for _ in range(streams)))
        elapsed = time.perf_counter() - started
        return (sum(counts) / elapsed, sum(counts) / (process_cpu_s(worker_pid) - worker_cpu),
                (time.process_time() - client_cpu) / elapsed)


def server_tokens_per_s(max_batch: int, streams: int, duration_s: float = DURATION_S) -> tuple[float, float, float]:
    """(output tokens/s, output tokens per CPU second of the serving worker, cores the client used) over the
    measured streams."""
    port = free_port()
    state_dir = Path(tempfile.mkdtemp(prefix="dcforge-bench-"))
    args = [sys.executable, "-m", "workloads.serve", "--port", str(port), "--replicas", "1", "--preset", PRESET,
            "--max-batch", str(max_batch), "--torch-threads", "1", "--state-dir", str(state_dir),
            "--log-level", "warning"]
    env = {**os.environ, "DCFORGE_API_KEY": KEY, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=state_dir / "server.log") as server:
        deadline = time.monotonic() + 90
        while not (ready := [pid for pid in child_pids(server.pid) if (state_dir / f"ready-{pid}").exists()]):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start; see {state_dir / 'server.log'}")
            time.sleep(0.1)
        return asyncio.run(_drive(f"http://127.0.0.1:{port}", streams, duration_s, ready[0]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serving efficiency and batching speedup")
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args(argv).rounds
    print(f"model {PRESET}, prompt {PROMPT_TOKENS} tokens, {MAX_TOKENS} output tokens, 1 replica, 1 torch thread; "
          f"load average before {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    raw, saturated, batched, unbatched = [], [], [], []
    for _ in range(rounds):
        raw.append(raw_decode_tokens_per_s(STREAMS))
        saturated.append(server_tokens_per_s(max_batch=STREAMS, streams=SATURATION_STREAMS))
        batched.append(server_tokens_per_s(max_batch=STREAMS, streams=STREAMS))
        unbatched.append(server_tokens_per_s(max_batch=1, streams=STREAMS))
    print(f"load average after {os.getloadavg()[0]:.2f}; {rounds} rounds, medians of tokens/s (tokens per CPU second)")
    for label, runs in ((f"raw batched forward (batch {STREAMS})", raw),
                        (f"server, {SATURATION_STREAMS} streams, max_batch {STREAMS}", saturated),
                        (f"server, {STREAMS} streams, max_batch {STREAMS}", batched),
                        (f"server, {STREAMS} streams, max_batch 1", unbatched)):
        client = f", client used {statistics.median(r[2] for r in runs):.2f} core" if len(runs[0]) > 2 else ""
        print(f"{label:<38} {statistics.median(r[0] for r in runs):8.0f} output tokens/s "
              f"({statistics.median(r[1] for r in runs):.0f} per CPU s{client})")
    for label, top, bottom, goal in (("serving efficiency (saturated / raw)", saturated, raw, ">= 0.85"),
                                     (f"same at {STREAMS} streams", batched, raw, "--"),
                                     (f"batching speedup (batch {STREAMS} / batch 1)", batched, unbatched, ">= 4")):
        print(f"{label:<38} {summary([a[0] / b[0] for a, b in zip(top, bottom)])} by tokens/s, "
              f"{summary([a[1] / b[1] for a, b in zip(top, bottom)])} per CPU s   goal {goal}")

if __name__ == "__main__":
    main()
