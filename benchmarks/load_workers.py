"""Load from many workers: the merged request log of N Locust workers against what the server counted
(python -m benchmarks.load_workers [--workers 1 2 4] [--seconds 4] [--starve]).

The inference check's own load path (dcforge's run_load: Locust's master/worker mode, `workers: N`) drives the
cheap fake OpenAI server (benchmarks/capacity_fake_openai.py, which lists the x-request-id of every chat request
it received). For each N the merged log must hold exactly the requests the server received: the same count and the
same ids, none twice (so none lost, none double-counted). Rates are the measured window's (request_throughput).

`--starve`: the same run with the first worker moved into a cgroup v1 `cpu` group with a 5 % quota (root, cgroup v1
cpu controller mounted): the client-saturation verdict must fire; without the quota it must not
(tests/integration/test_load_workers.py runs both, bounded).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.capacity_search import FakeEndpoint, fake_capacity_server

USERS = 8
STARVE_THINK_S = 0.05
"""Think time of the starvation runs: a light load, so an unstarved worker is far from a core (the verdict's CPU
rule would otherwise fire on a quiet machine, rightly)."""
FAKE_CAPACITY_RPS = 1e6
"""Never slow: the fake answers every request fast, so the run measures the load generator's bookkeeping."""


@dataclass
class WorkersRun:
    workers: int
    logged: int
    """Records in the merged log that were sent (warm-up included; none dropped at the client)."""
    server_counted: int
    missing: int
    """Ids the server received that the merged log lacks (lost)."""
    unexpected: int
    """Ids in the merged log the server never received."""
    server_duplicates: int
    measured: int
    request_throughput: float
    abandoned: int
    client_saturation: str | list[str]
    worker_logs: int

    @property
    def exact(self) -> bool:
        return self.logged == self.server_counted and not (self.missing or self.unexpected or self.server_duplicates)


def server_ids(base_url: str) -> list[str]:
    with urllib.request.urlopen(f"{base_url}/stats", timeout=10) as response:  # noqa: S310 (loopback)
        return json.load(response)["request_ids"]


def load_on_fake(base_url: str, report_dir: Path, settings: dict, during=None):
    """The inference check's load path (run_load) against a fake endpoint with the check's `settings` (camelCase,
    as in an environment file): (records, check result, request log folder)."""
    from dcforge.checks.inference import InferenceCheck, InferenceConfig
    from dcforge.steps.serving.load import REQUEST_LOG_DIR, ServingSession, run_load
    from dcforge.harness.check import CheckContext
    from dcforge.harness.result import CheckResult
    from dcforge.spec.loader import load_environment

    secrets = report_dir / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "api-key").write_text("test-key\n")
    session = ServingSession(FakeEndpoint(base_url), "test-key", secrets, report_dir / "inference", None,
                             prompt_tokens=8, served_name="fake")
    session.workdir.mkdir(parents=True)
    ctx = CheckContext(env=load_environment("local"), report_dir=report_dir, deadline=time.monotonic() + 600,
                       log=lambda line: None)
    config = InferenceConfig.model_validate({"spawnRate": 100, "replicas": 1, "startJitterS": 0, **settings})
    result = CheckResult("inference", declared=InferenceCheck.metrics)
    records, _ = run_load(ctx, config, session, result, during=during)
    return records, result, session.workdir / REQUEST_LOG_DIR


def run_workers(base_url: str, report_dir: Path, workers: int, seconds: float, during=None,
                think_time_s: float = 0.0) -> WorkersRun:
    """One load run of `workers` Locust workers (USERS closed-loop users in all) through the check's load path;
    `during(t_start, log_dir)` runs while it does (the starvation step)."""
    before = len(server_ids(base_url))
    records, result, log_dir = load_on_fake(base_url, report_dir, {
        "users": USERS, "maxTokens": 4, "warmupPerReplica": 1, "durationS": seconds, "workers": workers,
        "thinkTimeS": think_time_s, "stopGraceS": 2}, during=during)
    received = server_ids(base_url)[before:]
    from loadtests.llm_protocol import read_records

    log_paths = sorted(log_dir.glob("*.jsonl"))
    logged = [record for record in read_records(log_paths) if not record.error.startswith("dropped")]
    logged_ids, received_ids = {record.request_id for record in logged}, set(received)
    from loadtests.metrics import summarize

    return WorkersRun(workers, len(logged), len(received), len(received_ids - logged_ids),
                      len(logged_ids - received_ids), len(received) - len(received_ids), len(records),
                      summarize(records)["request_throughput"], int(result.metrics["abandoned_at_stop"].value),
                      result.details["client_saturation"], len(log_paths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--starve", action="store_true", help="also run 2 workers with the first one CPU-starved")
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    with fake_capacity_server(work, FAKE_CAPACITY_RPS) as base_url:
        for workers in args.workers:
            run = run_workers(base_url, work / f"w{workers}", workers, args.seconds)
            print(f"workers {workers}: merged log {run.logged} requests from {run.worker_logs} worker logs, server "
                  f"counted {run.server_counted} (missing {run.missing}, unexpected {run.unexpected}, received twice "
                  f"{run.server_duplicates}) -> {'exact' if run.exact else 'MISMATCH'}; measured {run.measured} at "
                  f"{run.request_throughput:.1f} req/s, abandoned {run.abandoned}; client saturation: "
                  f"{run.client_saturation}", flush=True)
        if args.starve:
            from benchmarks.cpu_starvation import starve_first_worker

            run = run_workers(base_url, work / "not-starved", 2, args.seconds, think_time_s=STARVE_THINK_S)
            print(f"2 workers, none starved: client saturation: {run.client_saturation}")
            with starve_first_worker() as during:
                run = run_workers(base_url, work / "starved", 2, args.seconds, during=during,
                                  think_time_s=STARVE_THINK_S)
            print(f"2 workers, first starved to {during.quota:.0%} of a core: client saturation: "
                  f"{run.client_saturation}; merged {run.logged}, server {run.server_counted}, "
                  f"{'exact' if run.exact else 'MISMATCH'}")
    print(f"load average (1, 5, 15 min) at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
