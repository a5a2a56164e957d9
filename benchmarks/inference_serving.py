"""Serving efficiency, batching speedup and low-load TTFT of the bundled server, measured side by side in one run.

- efficiency = server output tokens/s at saturation / raw batched decode tokens/s of the same model and batch
  size in one process (goal >= 0.85): what HTTP, SSE, asyncio and the scheduler cost. Saturation = twice as
  many closed-loop streams as batch slots, so a queued request takes every freed slot at the next step, as the
  raw loop keeps all its rows busy (with exactly as many streams as slots, a slot idles for the client's round
  trip after every answer); the efficiency at 32 streams is printed too;
- batching speedup = output tokens/s with 32 concurrent streams at max_batch 32 / the same at max_batch 1
  (goal >= 4x);
- TTFT at low load: one stream, requests one after the other, time from sending a request to its first token.

Both engine placements are measured in every round: `--engine process` (the default: the engine in a process of
its own) and `--engine thread` (the engine in a thread of the HTTP process, the design before), in alternating
order, so the comparison pairs like with like. The batching speedup is the default placement's.

One replica with one torch thread, so the client (this process) has the other core. Each figure is measured in
several rounds (raw, then each placement's server at max_batch 32: low-load TTFT, saturation, 32 streams; then the
unbatched server) and every ratio pairs the runs of one round; the median and range over rounds are printed.
Besides tokens/s (what the goals are about, and what swings with other processes on the machine) the same ratios
are printed per CPU second of the processes doing the work (this process for the raw loop; the server's replica
and, with `--engine process`, its engine process), which other load barely moves. How long those processes were
ready to run but waited for a CPU (schedstat) is printed per row: well above 0 means other load on the machine
held the measured work back, and the tokens/s figures understate what a quiet machine gives.

    python -m benchmarks.inference_serving [--rounds 3] [--preset tiny|125m|...]

The batching speedup can only be as large as the model's own gain from batching, printed beside it (the raw
forward at batch 32 / at batch 1): ~3x for the tiny preset, whose weights stay in the CPU's caches at batch 1,
~5x for 125m, whose weights are streamed from memory once per step whatever the batch -- the regime of real
models, and the one in which batching pays.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from benchmarks.inference_loadgen import process_cpu_s, summary
from dcforge.steps.serving.server import child_pids, free_port
from dcforge.harness.processes import ManagedProcess
from dcforge.paths import REPO_ROOT
from workloads.model import GPT, KVCache, get_preset
from workloads.serving.settings import ISOLATION_MODES, EngineSettings

PRESET = "tiny"
CONTEXT = 256
"""Tokens of context per sequence, for the server (`--max-context`) and the raw loop's cache alike: the tiny
preset's own max_seq_len, and enough for the prompt and the output (the larger presets' 2,048 would only make
the cache of 32 slots ~5 GB without changing the work per step)."""
PROMPT_TOKENS = 32
MAX_TOKENS = 64
STREAMS = 32
SATURATION_STREAMS = 2 * STREAMS
DURATION_S = {"tiny": 12.0}
"""Seconds each closed-loop measurement runs, per preset; 24 s for the others, where a batch of 32 answers takes
~8 s (125m) and a 12-s window would hold little more than one."""
TTFT_REQUESTS = 30
ENGINES = ISOLATION_MODES
DEFAULT_ENGINE = EngineSettings.isolation
KEY = "benchmark-key"


def runqueue_wait_s(pid: int | str) -> float:
    """Seconds the threads of a process were ready to run but waiting for a CPU (/proc/<pid>/task/*/schedstat,
    second field): how much other load on the machine held the measured work back."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            pass
    return total / 1e9


def raw_decode_tokens_per_s(batch: int, preset: str = PRESET, duration_s: float = 6.0) -> tuple[float, float, float]:
    """The best one process does with the model: prefill `batch` prompts in one forward, then decode MAX_TOKENS
    steps for all of them in lock step (every step attends over the same, shortest possible prefix), repeatedly.
    Same model, threads, cache size (the server's context) and token counts as the server.
    Returns (output tokens/s, output tokens per CPU second, seconds per second it waited for a CPU)."""
    torch.set_num_threads(1)
    config = get_preset(preset, max_seq_len=CONTEXT)
    torch.manual_seed(0)
    model = GPT(config).eval()
    cache = KVCache(config, batch, config.max_seq_len)
    slots = torch.arange(batch)
    tokens, started, cpu_started, waited = 0, time.perf_counter(), time.process_time(), runqueue_wait_s("self")
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
    elapsed = time.perf_counter() - started
    return tokens / elapsed, tokens / (time.process_time() - cpu_started), (runqueue_wait_s("self") - waited) / elapsed


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


def _cpu_s(pids: list[int]) -> float:
    return sum(process_cpu_s(pid) for pid in pids)


def _waited_s(pids: list[int]) -> float:
    return sum(runqueue_wait_s(pid) for pid in pids)


async def _drive(client: httpx.AsyncClient, streams: int, duration_s: float,
                 pids: list[int]) -> tuple[float, float, float, float]:
    """(output tokens/s, output tokens per CPU second of `pids`, seconds per second `pids` waited for a CPU, cores
    the client used) over `streams` closed-loop streams for `duration_s`."""
    counts: list[int] = []
    await asyncio.gather(*(_stream_loop(client, time.perf_counter() + 2.0, []) for _ in range(4)))  # warm-up
    started, server_cpu, waited = time.perf_counter(), _cpu_s(pids), _waited_s(pids)
    client_cpu = time.process_time()
    await asyncio.gather(*(_stream_loop(client, started + duration_s, counts) for _ in range(streams)))
    elapsed = time.perf_counter() - started
    return (sum(counts) / elapsed, sum(counts) / (_cpu_s(pids) - server_cpu), (_waited_s(pids) - waited) / elapsed,
            (time.process_time() - client_cpu) / elapsed)


async def _ttft_ms(client: httpx.AsyncClient, requests: int = TTFT_REQUESTS) -> list[float]:
    """Low load: one request at a time; milliseconds from sending it to the first byte of its first token's
    event (the response headers come before it)."""
    body = {"model": "dcforge-gpt", "prompt": "x" * (PROMPT_TOKENS - 1), "max_tokens": 4, "stream": True,
            "ignore_eos": True, "temperature": 0}
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        async with client.stream("POST", "/v1/completions", json=body) as response:
            first = None
            async for data in response.aiter_raw():
                if first is None and data:
                    first = time.perf_counter()
        if first is not None and response.status_code == 200:
            times.append((first - started) * 1000)
    return times


@contextmanager
def serving(max_batch: int, engine: str, preset: str):
    """The server with one replica; yields (base URL, pids of the replica and its engine process if any)."""
    port = free_port()
    state_dir = Path(tempfile.mkdtemp(prefix="dcforge-bench-"))
    args = [sys.executable, "-m", "workloads.serve", "--port", str(port), "--replicas", "1", "--preset", preset,
            "--max-context", str(CONTEXT), "--max-batch", str(max_batch), "--torch-threads", "1", "--state-dir", str(state_dir),
            "--engine", engine, "--log-level", "warning"]
    env = {**os.environ, "DCFORGE_API_KEY": KEY, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=state_dir / "server.log") as server:
        deadline = time.monotonic() + 90
        while not (ready := [pid for pid in child_pids(server.pid) if (state_dir / f"ready-{pid}").exists()]):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start; see {state_dir / 'server.log'}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", [ready[0], *child_pids(ready[0])]


def _client(base_url: str, streams: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=120, limits=httpx.Limits(max_connections=streams),
                             headers={"Authorization": f"Bearer {KEY}"})


def batched_server(engine: str, preset: str) -> dict[str, object]:
    """One server at max_batch 32: low-load TTFT, then saturation, then 32 streams."""
    async def measure(base_url: str, pids: list[int]) -> dict[str, object]:
        async with _client(base_url, SATURATION_STREAMS) as client:
            return {"ttft_ms": await _ttft_ms(client),
                    "saturated": await _drive(client, SATURATION_STREAMS, duration_s(preset), pids),
                    "batched": await _drive(client, STREAMS, duration_s(preset), pids)}

    with serving(STREAMS, engine, preset) as (base_url, pids):
        return asyncio.run(measure(base_url, pids))


def unbatched_server(engine: str, preset: str) -> tuple[float, float, float, float]:
    async def measure(base_url: str, pids: list[int]) -> tuple[float, float, float, float]:
        async with _client(base_url, STREAMS) as client:
            return await _drive(client, STREAMS, duration_s(preset), pids)

    with serving(1, engine, preset) as (base_url, pids):
        return asyncio.run(measure(base_url, pids))


def duration_s(preset: str) -> float:
    return DURATION_S.get(preset, 24.0)


def _print_ratios(rows: list[tuple[str, list, list, str]]) -> None:
    for label, top, bottom, goal in rows:
        print(f"{label:<44} {summary([a[0] / b[0] for a, b in zip(top, bottom)])} by tokens/s, "
              f"{summary([a[1] / b[1] for a, b in zip(top, bottom)])} per CPU s   goal {goal}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serving efficiency, batching speedup and low-load TTFT")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default=PRESET, help="model preset (workloads/model.py PRESETS)")
    args = parser.parse_args(argv)
    rounds, preset = args.rounds, args.preset
    print(f"model {preset}, prompt {PROMPT_TOKENS} tokens, {MAX_TOKENS} output tokens, context {CONTEXT}, "
          f"1 replica, 1 torch thread; load average before {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    raw, raw_single, unbatched = [], [], []
    runs: dict[str, list[dict[str, object]]] = {engine: [] for engine in ENGINES}
    for round_ in range(rounds):
        raw.append(raw_decode_tokens_per_s(STREAMS, preset))
        raw_single.append(raw_decode_tokens_per_s(1, preset))
        for engine in (ENGINES if round_ % 2 == 0 else ENGINES[::-1]):  # alternate which placement goes first
            runs[engine].append(batched_server(engine, preset))
        unbatched.append(unbatched_server(DEFAULT_ENGINE, preset))
    print(f"load average after {os.getloadavg()[0]:.2f}; {rounds} rounds, medians of tokens/s (tokens per CPU second)")
    rows = [(f"raw batched forward (batch {STREAMS})", raw), ("raw forward (batch 1)", raw_single)]
    for engine in ENGINES:
        rows += [(f"--engine {engine}: {SATURATION_STREAMS} streams, max_batch {STREAMS}",
                  [r["saturated"] for r in runs[engine]]),
                 (f"--engine {engine}: {STREAMS} streams, max_batch {STREAMS}", [r["batched"] for r in runs[engine]])]
    rows.append((f"--engine {DEFAULT_ENGINE}: {STREAMS} streams, max_batch 1", unbatched))
    for label, measured in rows:
        client = f", client used {statistics.median(r[3] for r in measured):.2f} core" if len(measured[0]) > 3 else ""
        print(f"{label:<44} {statistics.median(r[0] for r in measured):8.0f} output tokens/s "
              f"({statistics.median(r[1] for r in measured):.0f} per CPU s, waited for a CPU "
              f"{statistics.median(r[2] for r in measured):.2f} s/s{client})")
    for engine in ENGINES:
        ttft = [statistics.median(r["ttft_ms"]) for r in runs[engine]]
        p90 = [statistics.quantiles(r["ttft_ms"], n=10)[-1] for r in runs[engine]]
        print(f"--engine {engine}: low-load TTFT (1 stream, {TTFT_REQUESTS} requests per round) median "
              f"{summary(ttft)} ms, p90 {summary(p90)} ms")
    saturated = {engine: [r["saturated"] for r in runs[engine]] for engine in ENGINES}
    batched = {engine: [r["batched"] for r in runs[engine]] for engine in ENGINES}
    _print_ratios([(f"serving efficiency, --engine {engine}", saturated[engine], raw,
                    ">= 0.85" if engine == DEFAULT_ENGINE else "--") for engine in ENGINES] +
                  [(f"same at {STREAMS} streams, --engine {engine}", batched[engine], raw, "--")
                   for engine in ENGINES] +
                  [("saturation, process / thread", saturated["process"], saturated["thread"], "--"),
                   (f"batching speedup (batch {STREAMS} / batch 1)", batched[DEFAULT_ENGINE], unbatched, ">= 4"),
                   (f"the raw model's own gain (batch {STREAMS} / batch 1)", raw, raw_single, "--")])


if __name__ == "__main__":
    main()
