"""The LLM Locust user against the benchmark's fake endpoint in real Locust subprocesses: the batched request log
is complete however the run ends, every streamed request is measured, and connections are reused."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import httpx
import pytest

from benchmarks.inference_loadgen import wait_until_up
from dcforge.steps.serving.server import free_port
from dcforge.harness.processes import ManagedProcess
from dcforge.paths import REPO_ROOT
from loadtests.llm_protocol import read_records

pytestmark = pytest.mark.slow
USERS = 4
WARMUP = 3


@pytest.fixture(scope="module")
def fake_endpoint(tmp_path_factory):
    port = free_port()
    with ManagedProcess([sys.executable, "-m", "uvicorn", "benchmarks.inference_fake_openai:app", "--host",
                         "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=REPO_ROOT,
                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                        log_path=tmp_path_factory.mktemp("fake") / "server.log"):
        host = f"http://127.0.0.1:{port}"
        wait_until_up(host)
        yield host


@pytest.mark.parametrize("ending", ["run time over", "SIGTERM", "SIGINT"])
def test_request_log_has_every_counted_request_however_the_run_ends(fake_endpoint, tmp_path, ending):
    connections_before = int(httpx.get(f"{fake_endpoint}/connections", timeout=5).text)
    run_time = "3s" if ending == "run time over" else "60s"
    args = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtests" / "locustfile.py"), "--headless",
            "--only-summary", "--host", fake_endpoint, "-u", str(USERS), "-r", str(USERS), "-t", run_time,
            "--json-file", str(tmp_path / "stats")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENAI_API_KEY": "x", "LLM_MODEL": "fake",
           "LLM_MAX_TOKENS": "8", "LLM_THINK_TIME": "0", "LLM_START_JITTER": "0",  # back to back: many requests
           "LLM_REQUEST_LOG": str(tmp_path / "requests-{pid}.jsonl"), "LLM_WARMUP_PER_REPLICA": str(WARMUP)}
    with ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=tmp_path / "locust.log") as locust:
        if ending != "run time over":
            time.sleep(4)  # imports, spawning, then load until interrupted mid-run
            assert locust.poll() is None
            os.kill(locust.pid, getattr(signal, ending))
        locust.wait(60)
    counted = {s["name"]: s["num_requests"] for s in json.loads((tmp_path / "stats.json").read_text())}
    logged = read_records(sorted(tmp_path.glob("requests-*.jsonl")))
    records = [r for r in logged if not r.warmup]
    assert len(logged) - len(records) >= WARMUP  # the warm-up is logged, marked
    assert counted["/v1/chat/completions"] > 0
    # Locust's statistics were reset after the warm-up, and nothing measured was lost in the buffer.
    assert len(records) == counted["/v1/chat/completions"]
    assert all(r.ok and r.output_tokens == 8 and len(r.token_times_s) == 8 for r in logged)
    for r in records:  # token times are logged to the microsecond
        times = r.token_times_s
        assert abs(r.ttft_s - times[0]) <= 1e-6 and 0 < times[0] <= times[-1] <= r.e2e_s + 1e-6
    assert counted["ttft"] == counted["tpot"] == len(records)  # the web UI rows count every request once
    connections = int(httpx.get(f"{fake_endpoint}/connections", timeout=5).text) - connections_before
    assert connections <= 2 * USERS + 2 < len(records)  # finished streams hand their connection back
