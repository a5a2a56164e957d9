"""A serving run: the server started, ready and warmed up, then Locust for `durationS` writing a per-request log."""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dcforge.checks.serving.credentials import new_api_key, private_dir
from dcforge.checks.serving.server import LocalServer, warm_up
from dcforge.checks.serving.settings import ModelChoice, ServingLoadConfig, choose_model, fitted_prompt_tokens
from dcforge.harness.check import CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.processes import ManagedProcess
from dcforge.harness.result import CheckResult
from dcforge.paths import REPO_ROOT
from loadtests import pacing
from workloads.records import LOAD_API_KEY_ENV, REQUEST_LOG_TEMPLATE, LoadEnv, RequestRecord

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
RUN_METRICS = (
    MetricSpec("start_gap_ms", "ms", None, "gap between consecutive request starts, all users pooled",
               "how spread out requests arrive: near 0 means users fire together", stats=("p50",)),
    MetricSpec("starts_in_lockstep_fraction", "", "lower",
               f"consecutive request starts under {pacing.LOCKSTEP_GAP_S * 1000:g} ms apart / all consecutive pairs",
               "share of requests sent in a convoy with another one"),
    MetricSpec("completed_in_grace", "requests", None,
               "requests sent before the window ended and answered after it, within the grace period",
               "requests in flight at the end of the window that were completed and counted"),
    MetricSpec("abandoned_at_stop", "requests", "lower",
               "requests still unanswered when the grace period ended (not in the request log)",
               "requests sent but neither answered nor counted"),
)
"""Metrics of every load run besides the request summary: arrival spread and stop accounting."""
REQUEST_LOG_DIR = "requests"
"""Folder of the per-process request logs and window files under the check's artefact directory."""


def locust_process(config: ServingLoadConfig, server: LocalServer, secrets_dir: Path, workdir: Path,
                   prompt_tokens: int, model: str) -> tuple[ManagedProcess, Path]:
    """Locust headless in its own process group (gevent monkey-patching stays out of this process)."""
    request_log_dir = workdir / REQUEST_LOG_DIR
    shutil.rmtree(request_log_dir, ignore_errors=True)  # a reused report directory must not mix in old runs
    request_log_dir.mkdir(parents=True)
    args = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--host", server.base_url, "-u", str(config.users), "-r", str(config.spawn_rate),
            "-t", f"{config.duration_s:g}s", "--stop-timeout", f"{config.stop_grace_s:g}",
            "--exit-code-on-error", "0"]
    if config.locust_processes > 1:
        args += ["--processes", str(config.locust_processes)]
    env = {k: v for k, v in os.environ.items() if k != LOAD_API_KEY_ENV}
    env.update({LoadEnv.API_KEY_FILE: str(secrets_dir / "api-key"), LoadEnv.MODEL: model,
                LoadEnv.ENDPOINT: config.endpoint, LoadEnv.PROMPT_TOKENS: str(prompt_tokens),
                LoadEnv.MAX_TOKENS: str(config.max_tokens), LoadEnv.ARRIVAL: config.arrival,
                LoadEnv.RATE: str(config.rate), LoadEnv.TIMEOUT: str(config.request_timeout_s),
                LoadEnv.REQUEST_LOG: str(request_log_dir / REQUEST_LOG_TEMPLATE), "PYTHONPATH": str(REPO_ROOT),
                LoadEnv.THINK_TIME: str(config.think_time_s),
                LoadEnv.THINK_DISTRIBUTION: config.think_distribution,
                LoadEnv.START_JITTER: str(config.start_jitter_s),
                LoadEnv.WINDOW_FILE: str(request_log_dir / pacing.WINDOW_FILE_TEMPLATE)})
    env[LoadEnv.BURSTINESS] = str(config.burstiness)
    return ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=workdir / "locust.log"), request_log_dir


@dataclass
class ServingSession:
    server: LocalServer
    api_key: str
    secrets_dir: Path
    workdir: Path
    model: ModelChoice
    prompt_tokens: int
    served_name: str = "dcforge-gpt"


@contextmanager
def serving_session(ctx: CheckContext, config: ServingLoadConfig, check_name: str,
                    result: CheckResult) -> Iterator[ServingSession]:
    """Server started and ready (all replicas), warmed up; stopped on exit whatever happens."""
    from dcforge.errors import ConfigError

    model = choose_model(ctx, config)
    try:
        prompt_tokens = fitted_prompt_tokens(config, model.context_len)
    except ValueError as error:
        raise ConfigError(ctx.env.path, f"dcforge:acceptance.settings.{check_name}.maxTokens", str(error)) from None
    workdir = ctx.artefact_dir(check_name)
    api_key = new_api_key()  # per run, handed over in a 0600 file: never on a command line, never logged
    result.details.update(model=model.source, replicas=config.replicas, users=config.users,
                          arrival=config.arrival, duration_s=config.duration_s, prompt_tokens=prompt_tokens,
                          max_tokens=config.max_tokens, endpoint=config.endpoint, tls=config.tls,
                          max_batch=config.max_batch, max_wait_ms=config.max_wait_ms)
    with private_dir() as secrets_dir, LocalServer(config, model, secrets_dir, workdir, api_key) as server:
        result.artefacts["server_log"] = ctx.relative(server.log_path)
        ctx.log(f"starting {config.replicas} replicas ({model.source}) on {server.base_url}")
        ready_s = server.wait_ready(min(config.ready_timeout_s, max(1.0, ctx.remaining_s())))
        result.add_metric("replicas_ready_s", ready_s)
        session = ServingSession(server, api_key, secrets_dir, workdir, model, prompt_tokens)
        warm_up(server, api_key, session.served_name, config.warmup_requests, config.max_tokens)
        yield session


def run_load(ctx: CheckContext, config: ServingLoadConfig, session: ServingSession, result: CheckResult,
             during=None) -> tuple[list[RequestRecord], float]:
    """Locust for duration_s; `during(t_start, request_log_dir)` runs in this thread meanwhile. Returns (records,
    load start); the arrival model, the spread of request starts and what happened to requests in flight at the
    end of the window go into the result."""
    from loadtests.llm_protocol import read_records

    locust, log_dir = locust_process(config, session.server, session.secrets_dir, session.workdir,
                                     session.prompt_tokens, session.served_name)
    result.artefacts["locust_log"] = ctx.relative(session.workdir / "locust.log")
    ctx.log(f"Locust: {config.users} users, {config.arrival} arrivals, {config.duration_s:g} s")
    t_start = time.time()
    with locust:
        if during is not None:
            during(t_start, log_dir)
        code = locust.wait(timeout=min(config.duration_s + config.stop_grace_s + 60, max(5.0, ctx.remaining_s())))
    if code != 0:
        raise RuntimeError(f"Locust exited with code {code}; see {ctx.relative(session.workdir / 'locust.log')}")
    paths = sorted(log_dir.glob("*.jsonl"))
    records = read_records(paths)
    if not records:
        raise RuntimeError("Locust recorded no requests; see the Locust log")
    merged = session.workdir / "requests.jsonl"
    merged.write_text("".join(p.read_text() for p in paths))
    result.artefacts["request_log"] = ctx.relative(merged)
    add_pacing_figures(result, config, records, [pacing.MeasurementWindow.read(path)
                                                  for path in sorted(log_dir.glob("window-*.json"))])
    return records, t_start


def add_pacing_figures(result: CheckResult, config: ServingLoadConfig, records: list[RequestRecord],
                       windows: list[pacing.MeasurementWindow]) -> None:
    """How requests arrived (model and measured spread of starts) and how the window ended (stop semantics)."""
    result.details["arrival_model"] = pacing.describe_arrivals(config.arrival, config.think_time_s,
                                                               config.think_distribution, config.start_jitter_s,
                                                               config.rate, config.burstiness)
    spread = pacing.start_spread([record.start for record in records])
    if spread is not None:
        result.add_metric("start_gap_ms.p50", spread.median_gap_ms)
        result.add_metric("starts_in_lockstep_fraction", spread.lockstep_fraction)
    accounting = pacing.stop_accounting(windows, [(record.start, record.end) for record in records])
    if accounting is None:
        result.details["stop_semantics"] = "unknown: Locust wrote no window file"
        return
    result.details["stop_semantics"] = (f"requests in flight when the {config.duration_s:g}-s window ended completed "
                                        f"within a {config.stop_grace_s:g}-s grace period and are counted; those "
                                        "still unanswered after it are abandoned, not counted, and reported")
    result.add_metric("completed_in_grace", accounting.completed_in_grace)
    result.add_metric("abandoned_at_stop", accounting.abandoned)
    result.details["sent_after_window"] = accounting.sent_after_stop  # 0 unless a user raced Locust's stop
