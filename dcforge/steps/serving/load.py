"""A serving run: the server started and ready, then Locust -- a warm-up of `warmupPerReplica` requests per replica,
then `durationS` measured -- writing a per-request log (warm-up requests marked in it)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dcforge.steps.serving.credentials import new_api_key, private_dir
from dcforge.steps.serving.server import LocalServer
from dcforge.steps.serving.settings import ModelChoice, ServingLoadConfig, choose_model, fitted_prompt_tokens
from dcforge.harness.check import CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.processes import ManagedProcess
from dcforge.harness.result import CheckResult
from dcforge.paths import REPO_ROOT
from loadtests import pacing
from loadtests.warmup import CAP_FACTOR
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
AIPERF_EXPORT_FILE = "profile_export.jsonl"
"""Every request of the log in AIPerf's per-request export form (loadtests/aiperf_export.py), beside requests.jsonl."""
REQUEST_LOG_DIR = "requests"
"""Folder of the per-process request logs and window files under the check's artefact directory."""


def warmup_allowance_s(config: ServingLoadConfig) -> float:
    """The longest ramp-up and warm-up can take: spawning every user, then the warm-up's request cap in waves of
    `users` requests, each within the request timeout. Only a hard limit (Locust's -t beyond durationS): a healthy
    warm-up takes a second or two, and the measured window is durationS whatever it took."""
    waves = -(-CAP_FACTOR * config.warmup_per_replica * config.replicas // config.users)
    return config.users / config.spawn_rate + waves * config.request_timeout_s + 5.0


def locust_process(config: ServingLoadConfig, server: LocalServer, secrets_dir: Path, workdir: Path,
                   prompt_tokens: int, model: str, prompt_file: Path | None = None,
                   context_len: int = 0) -> tuple[ManagedProcess, Path]:
    """Locust headless in its own process group (gevent monkey-patching stays out of this process)."""
    request_log_dir = workdir / REQUEST_LOG_DIR
    shutil.rmtree(request_log_dir, ignore_errors=True)  # a reused report directory must not mix in old runs
    request_log_dir.mkdir(parents=True)
    args = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *locust_arguments(config),
            "--host", server.base_url]
    env = {k: v for k, v in os.environ.items() if k != LOAD_API_KEY_ENV}
    env.update(load_settings(config, prompt_tokens, model, str(prompt_file or ""), context_len))
    env.update({LoadEnv.API_KEY_FILE: str(secrets_dir / "api-key"),
                LoadEnv.REQUEST_LOG: str(request_log_dir / REQUEST_LOG_TEMPLATE),
                LoadEnv.WINDOW_FILE: str(request_log_dir / pacing.WINDOW_FILE_TEMPLATE),
                "PYTHONPATH": str(REPO_ROOT)})
    return ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=workdir / "locust.log"), request_log_dir


def locust_arguments(config: ServingLoadConfig) -> list[str]:
    """Locust's options after `-f <locustfile>`, less `--host` (where it runs decides the address).

    One process measures exactly durationS after the warm-up and ends the run itself; -t is the hard limit. With
    workers > 1 the processes cannot agree on when the warm-up ended, so -t is durationS and the warm-up
    is part of it."""
    single = config.workers == 1
    run_time = config.duration_s + (warmup_allowance_s(config) if single else 0.0)
    args = ["--headless", "--only-summary", "-u", str(config.users), "-r", str(config.spawn_rate),
            "-t", f"{run_time:.0f}s", "--stop-timeout", f"{config.stop_grace_s:g}", "--exit-code-on-error", "0"]
    return args if single else [*args, "--processes", str(config.workers)]


def load_settings(config: ServingLoadConfig, prompt_tokens: int, model: str, prompt_file: str,
                  conversation_tokens: int = 0) -> dict[str, str]:
    """The load generator's settings (loadtests/locustfile.py's environment), less where its files are: the API
    key file, the request log and the window file (where it runs decides the paths). `conversation_tokens`: the
    model's context, which a conversation's turn must fit (0: not limited)."""
    single = config.workers == 1
    return {LoadEnv.MODEL: model, LoadEnv.ENDPOINT: config.endpoint, LoadEnv.PROMPT_TOKENS: str(prompt_tokens),
            LoadEnv.MAX_TOKENS: str(config.max_tokens), LoadEnv.ARRIVAL: config.arrival,
            LoadEnv.RATE: str(config.rate), LoadEnv.TIMEOUT: str(config.request_timeout_s),
            LoadEnv.THINK_TIME: str(config.think_time_s), LoadEnv.THINK_DISTRIBUTION: config.think_distribution,
            LoadEnv.START_JITTER: str(config.start_jitter_s),
            LoadEnv.PROMPT_TOKENS_SPREAD: str(config.prompt_tokens_spread),
            LoadEnv.MAX_TOKENS_SPREAD: str(config.max_tokens_spread), LoadEnv.PROMPT_FILE: prompt_file,
            LoadEnv.SHARED_PREFIXES: str(config.shared_prefixes),
            LoadEnv.SHARED_PREFIX_TOKENS: str(config.shared_prefix_tokens),
            LoadEnv.WARMUP_PER_REPLICA: str(config.warmup_per_replica), LoadEnv.WARMUP_REPLICAS: str(config.replicas),
            LoadEnv.DURATION: str(config.duration_s if single else 0.0), LoadEnv.BURSTINESS: str(config.burstiness),
            LoadEnv.TURNS: str(config.turns), LoadEnv.CONVERSATION_TOKENS: str(conversation_tokens)}


@dataclass
class ServingSession:
    server: LocalServer
    api_key: str
    secrets_dir: Path
    workdir: Path
    model: ModelChoice
    prompt_tokens: int
    prompt_file: Path | None = None
    """The JSONL prompt file (promptFile, resolved and read once before the run)."""
    served_name: str = "dcforge-gpt"


@contextmanager
def serving_session(ctx: CheckContext, config: ServingLoadConfig, check_name: str,
                    result: CheckResult) -> Iterator[ServingSession]:
    """Server started and ready (all replicas); stopped on exit whatever happens. A prompt file that cannot be read
    or a length that does not fit the model's context is bad input (ConfigError naming the setting)."""
    from dcforge.errors import ConfigError

    model = choose_model(ctx, config)
    settings_key = f"dcforge:acceptance.settings.{check_name}"
    try:
        prompt_tokens = fitted_prompt_tokens(config, model.context_len)
    except ValueError as error:
        raise ConfigError(ctx.env.path, f"{settings_key}.maxTokens", str(error)) from None
    prompt_file = resolved_prompt_file(ctx, config, f"{settings_key}.promptFile")
    workdir = ctx.artefact_dir(check_name)
    api_key = new_api_key()  # per run, handed over in a 0600 file: never on a command line, never logged
    result.details.update(run_details(config, model.source, prompt_tokens, prompt_file))
    with private_dir() as secrets_dir, LocalServer(config, model, secrets_dir, workdir, api_key) as server:
        result.artefacts["server_log"] = ctx.relative(server.log_path)
        ctx.log(f"starting {config.replicas} replicas ({model.source}) on {server.base_url}")
        ready_s = server.wait_ready(min(config.ready_timeout_s, max(1.0, ctx.remaining_s())))
        result.add_metric("replicas_ready_s", ready_s)
        yield ServingSession(server, api_key, secrets_dir, workdir, model, prompt_tokens, prompt_file)


def run_details(config: ServingLoadConfig, model: str, prompt_tokens: int, prompt_file: Path | None) -> dict:
    """What the report says about a serving run's set-up."""
    return dict(model=model, replicas=config.replicas, users=config.users, arrival=config.arrival,
                duration_s=config.duration_s, prompt_tokens=prompt_tokens, max_tokens=config.max_tokens,
                endpoint=config.endpoint, tls=config.tls, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                warmup_per_replica=config.warmup_per_replica,
                workload=describe_workload(config, prompt_tokens, prompt_file),
                goodput=config.request_slo().describe() or "every successful request")


def resolved_prompt_file(ctx: CheckContext, config: ServingLoadConfig, key: str) -> Path | None:
    """promptFile relative to the environment file's folder, read once here so a bad file is one line, exit 2."""
    from dcforge.errors import ConfigError
    from loadtests.llm_protocol import PromptFileError, read_prompt_file

    if not config.prompt_file:
        return None
    path = Path(config.prompt_file).expanduser()
    if not path.is_absolute() and ctx.env.path is not None:
        path = Path(ctx.env.path).parent / path
    try:
        read_prompt_file(path)
    except PromptFileError as error:
        raise ConfigError(ctx.env.path, key, str(error)) from None
    return path.resolve()


def describe_workload(config: ServingLoadConfig, prompt_tokens: int, prompt_file: Path | None) -> str:
    """The request shapes in words, for the report."""
    def lengths(mean: int, spread: float) -> str:
        low, high = max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread)))
        return f"{mean} tokens" if spread == 0 else f"uniform {low}-{high} tokens"

    prompts = f"prompts from {prompt_file}" if prompt_file else \
        f"generated prompts of {lengths(prompt_tokens, config.prompt_tokens_spread)}"
    prefix = f", each behind one of {config.shared_prefixes} shared {config.shared_prefix_tokens}-token system " \
        "prompts" if config.shared_prefixes else ""
    return f"{prompts}{prefix}; answers of {lengths(config.max_tokens, config.max_tokens_spread)}"


def run_load(ctx: CheckContext, config: ServingLoadConfig, session: ServingSession, result: CheckResult,
             during=None, scraper=None, watch=None) -> tuple[list[RequestRecord], float]:
    """Locust for duration_s; `during(t_start, request_log_dir)` runs in this thread meanwhile, and `scraper` (a
    `loadtests.server_metrics.Scraper`) samples the server's /metrics while Locust runs, and `watch` (a
    `point_watch.PointWatch`) may stop it early. Returns (records, load
    start); the arrival model, the spread of request starts and what happened to requests in flight at the end of
    the window go into the result."""
    locust, log_dir = locust_process(config, session.server, session.secrets_dir, session.workdir,
                                     session.prompt_tokens, session.served_name, session.prompt_file,
                                     session.model.context_len if session.model else 0)
    result.artefacts["locust_log"] = ctx.relative(session.workdir / "locust.log")
    ctx.log(f"Locust: {config.users} users, {config.arrival} arrivals, {config.warmup_per_replica} warm-up "
            f"requests per replica, then {config.duration_s:g} s")
    t_start = time.time()
    limit = config.duration_s + warmup_allowance_s(config) + config.stop_grace_s + 60
    with locust, scraper or nullcontext():
        if during is not None:
            during(t_start, log_dir)
        if watch is not None:
            watch.follow(locust, log_dir)
        code = locust.wait(timeout=min(limit, max(5.0, ctx.remaining_s())))
    if code != 0 and not (watch is not None and watch.stop_reason):  # interrupted on purpose: what it logged counts
        raise RuntimeError(f"Locust exited with code {code}; see {ctx.relative(session.workdir / 'locust.log')}")
    return collect_load(ctx, config, session.workdir, log_dir, result), t_start


def collect_load(ctx: CheckContext, config: ServingLoadConfig, workdir: Path, log_dir: Path,
                 result: CheckResult) -> list[RequestRecord]:
    """The measured requests of a finished load run, from the request logs and window files Locust left in
    `log_dir`: the merged request log and its AIPerf export written into `workdir`; the warm-up count, the arrival
    spread and the stop accounting added to the result."""
    from loadtests.aiperf_export import write_profile_export
    from loadtests.llm_protocol import read_records
    from loadtests.metrics import measured

    paths = sorted(log_dir.glob("*.jsonl"))
    logged = read_records(paths)
    records = measured(logged)
    if not records:
        raise RuntimeError("Locust recorded no measured requests; see the Locust log")
    merged = workdir / "requests.jsonl"
    merged.write_text("".join(p.read_text() for p in paths))
    result.artefacts["request_log"] = ctx.relative(merged)
    export = workdir / AIPERF_EXPORT_FILE
    write_profile_export(logged, export)
    result.artefacts["aiperf_profile_export"] = ctx.relative(export)
    result.add_metric("warmup_requests", len(logged) - len(records))
    add_pacing_figures(result, config, records, [pacing.MeasurementWindow.read(path)
                                                  for path in sorted(log_dir.glob("window-*.json"))])
    return records


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
    from loadtests.saturation import client_saturation_of

    saturated = client_saturation_of(windows, config.rate if config.arrival != "closed" else None)
    result.details["client_saturation"] = saturated or "not saturated"
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
