"""Load-generator headroom: requests/s of the LLM Locust user (streaming, SSE parsing, per-request JSONL log)
against a trivial streaming endpoint / requests/s of a plain FastHttpUser against GET /health on the same
server, same users, same duration, side by side (goal >= 0.5).

    python -m benchmarks.inference_loadgen
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dcforge.checks._serving import free_port
from dcforge.harness.processes import ManagedProcess
from dcforge.spec.loader import REPO_ROOT
from loadtests.llm_protocol import read_records

USERS = 8
DURATION_S = 10


def locust_rps(host: str, locustfile: str, workdir: Path, extra_env: dict[str, str]) -> float:
    """Requests/s over the run; the LLM user's count comes from its own log, the plain user's from --json."""
    json_path = workdir / f"{Path(locustfile).stem}.json"
    args = [sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--only-summary", "--host", host,
            "-u", str(USERS), "-r", str(USERS), "-t", f"{DURATION_S}s", "--json-file", str(json_path.with_suffix(""))]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra_env}
    with ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=workdir / "locust.log") as locust:
        locust.wait(DURATION_S + 60)
    if "LLM_REQUEST_LOG" in extra_env:
        records = read_records(sorted(workdir.glob("requests-*.jsonl")))
        ok = [r for r in records if r["ok"]]
        return len(ok) / (max(r["end"] for r in ok) - min(r["start"] for r in ok))
    import json

    stats = json.loads(json_path.read_text())
    entry = next(s for s in stats if s["name"] == "/health")
    return entry["num_requests"] / (entry["last_request_timestamp"] - entry["start_time"])


def main() -> None:
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp, ManagedProcess(
            [sys.executable, "-m", "uvicorn", "benchmarks.inference_fake_openai:app", "--port", str(port),
             "--log-level", "warning"], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}):
        workdir = Path(tmp)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{host}/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("fake endpoint did not start")
                time.sleep(0.1)
        plain = locust_rps(host, str(REPO_ROOT / "loadtests" / "baseline_locustfile.py"), workdir, {})
        llm = locust_rps(host, str(REPO_ROOT / "loadtests" / "locustfile.py"), workdir,
                         {"OPENAI_API_KEY": "x", "LLM_MODEL": "fake", "LLM_MAX_TOKENS": "8",
                          "LLM_REQUEST_LOG": str(workdir / "requests-{pid}.jsonl")})
    print(f"{USERS} users, {DURATION_S} s each, one Locust process, one uvicorn server process")
    print(f"plain FastHttpUser GET /health:        {plain:8.0f} req/s")
    print(f"LLM user, streamed 8-token answers:    {llm:8.0f} req/s")
    print(f"load generator headroom (LLM / plain): {llm / plain:8.2f}   goal >= 0.5")


if __name__ == "__main__":
    main()
