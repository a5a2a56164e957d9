"""The load pod of `inference` on Kubernetes: what the check does around Locust on this machine, done inside the
cluster, next to the server it loads (dcforge/placement/serving.py builds the pod).

    python -m dcforge.steps.serving.load_pod --url http://10.96.0.12:29400 --replicas 2 --ready-timeout 120 \\
        --logs /dcforge/scratch/requests --results /dcforge/results --timeout 300 -- python -m locust ...

1. waits until every replica of the server answers `/ready` (the server pod starts with this one; the
   Deployment's readinessProbe only says that its port accepts connections);
2. checks the endpoint's dynamic rules (API key required) from inside the cluster;
3. runs the Locust command after `--` with a hard time limit;
4. reads the server's `/metrics`;
5. leaves in `--results` the merged request log (`LOAD_POD_REQUESTS_FILE`) and one `LoadPodResult` line
   (`LOAD_POD_RESULT_FILE`), which the executor carries back through the pod log.

With `--kill-at S` (inference_failover) it also prints `KILL_LINE <epoch>` S seconds after Locust started: the
check, reading this pod's log, deletes a server pod when it sees the line. The epoch is this pod's clock, the
request log's, so the kill is placed on the requests' time line without comparing two machines' clocks.

Exits with Locust's code; 3 when the server never got ready (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from workloads.records import LOAD_POD_REQUESTS_FILE, LOAD_POD_RESULT_FILE, LoadPodResult, emit_result

EXIT_NOT_READY = 3
KILL_LINE = "dcforge.load_pod kill-now"
"""Printed with this pod's epoch when a server pod should be deleted (`--kill-at`)."""
POLL_S = 0.2
LOCUST_KILLED = 124
"""Exit code when Locust outlived --timeout and was killed (as coreutils `timeout` says it)."""


class NotReady(RuntimeError):
    """The server did not get every replica ready in time."""


def wait_for_replicas(url: str, replicas: int, timeout_s: float) -> tuple[float, int]:
    """Seconds until `replicas` distinct replicas answered `/ready` 200, and how many did; NotReady (one line)
    when the time runs out. Each request is a new connection, so the server's replicas take turns answering."""
    import httpx

    started = time.monotonic()
    seen: set[str] = set()
    last = "no answer yet"
    while time.monotonic() - started < timeout_s:
        try:
            response = httpx.get(f"{url}/ready", timeout=5.0, headers={"Connection": "close"})
            if response.status_code == 200:
                seen.add(str(response.json()["replica"]))
                if len(seen) >= replicas:
                    return time.monotonic() - started, len(seen)
            last = f"HTTP {response.status_code}: {response.text[:100]}"
        except (httpx.HTTPError, ValueError, KeyError) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(POLL_S)
    raise NotReady(f"the server at {url}: {len(seen)}/{replicas} replicas ready after {timeout_s:g} s "
                   f"(last answer: {last})")


def run_locust(command: list[str], timeout_s: float, kill_at_s: float | None = None) -> int:
    """Locust's exit code; LOCUST_KILLED when it ran past `timeout_s` (its process group is killed then). With
    `kill_at_s`, KILL_LINE is printed that long after Locust started (unless it has ended by then)."""
    process = subprocess.Popen(command, start_new_session=True)
    if kill_at_s is not None:
        def announce() -> None:
            try:
                process.wait(timeout=kill_at_s)
            except subprocess.TimeoutExpired:
                print(f"{KILL_LINE} {time.time():.6f}", flush=True)
        threading.Thread(target=announce, daemon=True).start()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return LOCUST_KILLED


def server_metrics(url: str) -> str:
    import httpx

    try:
        return httpx.get(f"{url}/metrics", timeout=10.0).text
    except httpx.HTTPError:
        return ""


def collect(logs: Path, results: Path) -> list[dict]:
    """The merged request log into `results`; the measurement windows, returned."""
    (results / LOAD_POD_REQUESTS_FILE).write_text("".join(p.read_text() for p in sorted(logs.glob("*.jsonl"))))
    return [json.loads(p.read_text()) for p in sorted(logs.glob("window-*.json"))]


def main(argv: list[str] | None = None) -> int:
    from dcforge.compliance.endpoint import check_endpoint

    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: load_pod [options] -- <locust command>", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m dcforge.steps.serving.load_pod")
    parser.add_argument("--url", required=True)
    parser.add_argument("--served-name", default="dcforge-gpt")
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--ready-timeout", type=float, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--kill-at", type=float, help="print KILL_LINE this many seconds after Locust started")
    args = parser.parse_args(argv[:split])
    args.logs.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    try:
        ready_s, replicas = wait_for_replicas(args.url, args.replicas, args.ready_timeout)
    except NotReady as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_READY
    print(f"{replicas} replicas ready after {ready_s:.1f} s", flush=True)
    findings = [finding.__dict__ for finding in check_endpoint(args.url, args.served_name)]
    locust_started = time.time()
    code = run_locust(argv[split + 1:], args.timeout, args.kill_at)
    windows = collect(args.logs, args.results)
    emit_result(LoadPodResult(ready_s=ready_s, replicas_ready=replicas, endpoint_findings=findings,
                              locust_exit=code, windows=windows, locust_started=locust_started,
                              server_metrics=server_metrics(args.url)),
                args.results / LOAD_POD_RESULT_FILE)
    return code


if __name__ == "__main__":
    sys.exit(main())
