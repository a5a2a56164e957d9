"""Load-generator headroom: requests/s of the LLM Locust user / requests/s of a plain FastHttpUser, against the
same trivial server, side by side in one run (goal >= 0.5).

    python -m benchmarks.inference_loadgen [--rounds 3] [--seconds 8] [--llm-locustfile OLD_VERSION.py ...]

Like with like: one Locust process, headless, the same users and spawn rate, the same duration, both against
`benchmarks/inference_fake_openai.py` in one uvicorn process. The baseline `PlainChatUser` POSTs a request of the
same size to the same endpoint and receives the same streamed answer (8 chunks + usage + [DONE]) but reads it in
one piece: what remains is the LLM user's own cost (prompt and body per request, SSE parsing and timing per chunk,
TTFT/TPOT statistics, the JSONL log). GET /health is measured too, as the original, smaller baseline.

Each figure comes from a probe inside the Locust process (benchmarks/inference_loadgen_probe.py): requests, wall
and CPU seconds from "all users running" to "stopping". req/s is what the goal is about; CPU ms per request is
the same cost seen without the other processes on the machine (req/s swings with them, CPU per request barely).
The users run in alternating order over several rounds; each headroom ratio pairs the LLM and plain
runs of one round (seconds apart, so under about the same machine load), and the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from dcforge.steps.serving.server import free_port
from dcforge.harness.processes import ManagedProcess
from dcforge.paths import REPO_ROOT

USERS = 8
PROBE = REPO_ROOT / "benchmarks" / "inference_loadgen_probe.py"
BASELINE = REPO_ROOT / "loadtests" / "baseline_locustfile.py"


@dataclass(frozen=True)
class Contender:
    label: str
    locustfile: Path
    user_class: str = ""
    """Locust user class to run; empty for the file's only user."""
    llm: bool = False
    """Runs with the LLM user's settings and request log."""


@dataclass(frozen=True)
class Measurement:
    rps: float
    cpu_ms_per_request: float
    cpu_utilisation: float
    """Locust CPU seconds / wall seconds: near 1.0 means the generator itself is the limit."""
    log_complete: bool | None
    """LLM users: the JSONL log has exactly one line per request Locust counted."""
    server_cpu_ms_per_request: float
    """The fake server's CPU per request; server ms/req x req/s near 1000 would mean the server is the limit."""


def run_locust(contender: Contender, host: str, server_pid: int, workdir: Path, seconds: int) -> Measurement:
    probe_out = workdir / "probe.json"
    probe_out.unlink(missing_ok=True)
    stats_base = workdir / "stats"
    args = [sys.executable, "-m", "locust", "-f", f"{contender.locustfile},{PROBE}", "--headless", "--only-summary",
            "--host", host, "-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s", "--json-file", str(stats_base)]
    if contender.user_class:
        args.append(contender.user_class)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "LOADGEN_PROBE_OUT": str(probe_out)}
    log_dir = workdir / "requests"
    if contender.llm:
        for old in log_dir.glob("*.jsonl"):
            old.unlink()
        # No think time and no start jitter: the benchmark measures how fast the user can send, back to back. No
        # warm-up either: Locust's statistics and the log then cover the same requests (log_complete compares them).
        env.update(OPENAI_API_KEY="x", LLM_MODEL="fake", LLM_MAX_TOKENS="8", LLM_PROMPT_TOKENS="64",
                   LLM_THINK_TIME="0", LLM_START_JITTER="0", LLM_WARMUP_PER_REPLICA="0",
                   LLM_REQUEST_LOG=str(log_dir / "requests-{pid}.jsonl"))
    server_cpu_before = process_cpu_s(server_pid)
    with ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=workdir / "locust.log") as locust:
        locust.wait(seconds + 60)
    server_cpu_s = process_cpu_s(server_pid) - server_cpu_before
    probe = json.loads(probe_out.read_text())
    stats = json.loads(stats_base.with_suffix(".json").read_text())
    http_requests = sum(s["num_requests"] for s in stats if s["method"] in ("GET", "POST"))
    log_complete = None
    if contender.llm:
        logged = sum(len(path.read_text().splitlines()) for path in log_dir.glob("*.jsonl"))
        log_complete = logged == sum(s["num_requests"] for s in stats if s["method"] == "POST")
    return Measurement(probe["requests"] / probe["wall_s"], 1000 * probe["cpu_s"] / probe["requests"],
                       probe["cpu_s"] / probe["wall_s"], log_complete, 1000 * server_cpu_s / max(1, http_requests))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_up(host: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{host}/health", timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError("fake endpoint did not start") from None
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8, help="Locust run time per user and round")
    parser.add_argument("--llm-locustfile", action="append", default=[], type=Path,
                        help="another LLM locustfile to measure beside the current one (e.g. an older version)")
    options = parser.parse_args(argv)
    # The like-for-like pair runs next to each other in every round; GET /health comes last (first when reversed).
    contenders = [Contender("plain POST, same stream", BASELINE, "PlainChatUser"),
                  Contender("LLM user", REPO_ROOT / "loadtests" / "locustfile.py", llm=True)]
    contenders += [Contender(f"LLM user ({path})", path.resolve(), llm=True) for path in options.llm_locustfile]
    contenders.append(Contender("plain GET /health", BASELINE, "PlainHealthUser"))
    results: dict[str, list[Measurement]] = {c.label: [] for c in contenders}
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp, ManagedProcess(
            [sys.executable, "-m", "uvicorn", "benchmarks.inference_fake_openai:app", "--port", str(port),
             "--host", "127.0.0.1", "--log-level", "warning"], cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, log_path=Path(tmp) / "server.log") as server:
        wait_until_up(host)
        for round_index in range(options.rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]  # no user always runs first
            for contender in order:
                results[contender.label].append(run_locust(contender, host, server.pid, Path(tmp),
                                                           options.seconds))
    print(f"load average after:  {os.getloadavg()[0]:.2f}")
    print(f"{USERS} users, {options.seconds} s x {options.rounds} rounds each, one Locust process, one uvicorn process;"
          " medians")
    print(f"{'user':<40} {'req/s':>8} {'CPU ms/req':>11} {'Locust CPU':>11} {'server CPU':>11}  log complete")
    for label, runs in results.items():
        rps = statistics.median(m.rps for m in runs)
        cpu = statistics.median(m.cpu_ms_per_request for m in runs)
        complete = "" if runs[0].log_complete is None else str(all(m.log_complete for m in runs))
        server_share = statistics.median(m.server_cpu_ms_per_request for m in runs) * rps / 1000
        print(f"{label:<40} {rps:8.0f} {cpu:11.3f} {statistics.median(m.cpu_utilisation for m in runs):10.0%}"
              f" {server_share:10.0%}   {complete}")
    print("headroom = LLM user / plain user, paired by round (same round, seconds apart), median [min-max]:")
    for contender in contenders:
        if contender.llm:
            llm_runs = results[contender.label]
            for baseline in ("plain POST, same stream", "plain GET /health"):
                plain_runs = results[baseline]
                by_rps = [llm.rps / plain.rps for llm, plain in zip(llm_runs, plain_runs)]
                by_cpu = [plain.cpu_ms_per_request / llm.cpu_ms_per_request for llm, plain in zip(llm_runs, plain_runs)]
                print(f"  {contender.label} vs {baseline}: req/s {summary(by_rps)}, CPU per request {summary(by_cpu)}"
                      "   goal >= 0.5")


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


if __name__ == "__main__":
    main()
