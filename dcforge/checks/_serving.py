"""What the `inference` and `inference_failover` checks share: settings, the local server under gunicorn, the
API key handed over through a private file, the Locust subprocess, and turning the request log into metrics."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, model_validator

from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.processes import ManagedProcess
from dcforge.harness.result import CheckResult, Plot, Series
from dcforge.paths import REPO_ROOT
from workloads.records import (LOAD_API_KEY_ENV, LOAD_DEFAULTS, REQUEST_LOG_TEMPLATE, LoadEnv, RequestRecord,
                               ready_replicas)
from workloads.serving.settings import API_KEY_ENV, API_KEY_FILE_ENV

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
CHAT_TEMPLATE_TOKENS = 48
"""Tokens the server's chat template and BOS add around the user's prompt (byte tokenizer), with margin."""


class ServingLoadConfig(CheckConfig):
    """Settings shared by `inference` and `inference_failover`."""

    replicas: int = Field(default=3, ge=1, le=32)
    """Server worker processes (gunicorn respawns a dead one)."""
    model_source: Literal["auto", "random", "trained"] = "auto"
    """auto: the checkpoint the `train` check wrote in this run if any, else random weights of `preset`."""
    preset: str = "tiny"
    """Model preset served with random weights."""
    max_batch: int = Field(default=16, ge=1)
    """Sequences decoded together per replica."""
    max_wait_ms: float = Field(default=5.0, ge=0)
    """How long an idle replica waits to gather a batch."""
    users: int = Field(default=8, ge=1)
    """Concurrent Locust users (closed loop) or the users carrying the open-loop arrivals."""
    spawn_rate: float = Field(default=8.0, gt=0)
    """Users started per second."""
    arrival: Literal["closed", "constant", "poisson"] = LOAD_DEFAULTS.arrival  # type: ignore[assignment]
    """closed: send, wait for the answer, send again; constant/poisson: open-loop arrivals at `rate`."""
    rate: float = Field(default=LOAD_DEFAULTS.rate, gt=0)
    """Open-loop arrivals per second (all users together)."""
    duration_s: float = Field(default=20.0, gt=0, le=3600)
    """Length of the load run."""
    warmup_requests: int = Field(default=6, ge=0)
    """Requests sent before the load run (first-request costs stay out of the statistics)."""
    endpoint: Literal["chat", "completions"] = LOAD_DEFAULTS.endpoint  # type: ignore[assignment]
    prompt_tokens: int = Field(default=LOAD_DEFAULTS.prompt_tokens, ge=1)
    """Mean prompt length (uniform within +/-25 %)."""
    max_tokens: int = Field(default=LOAD_DEFAULTS.max_tokens, ge=1)
    """Tokens generated per request (EOS ignored, so every answer has this many)."""
    request_timeout_s: float = Field(default=LOAD_DEFAULTS.request_timeout_s, gt=0)
    """A request slower than this counts as failed."""
    goodput_ttft_ms: float | None = Field(default=None, gt=0)
    """Per-request TTFT limit for goodput; None: not part of goodput."""
    goodput_tpot_ms: float | None = Field(default=None, gt=0)
    """Per-request TPOT limit for goodput."""
    tls: bool = False
    """Serve HTTPS with a self-signed certificate (and check the TLS 1.2 floor)."""
    locust_processes: int = Field(default=1, ge=1)
    """Locust worker processes (--processes); 1 runs Locust in a single process."""
    ready_timeout_s: float = Field(default=120.0, gt=0)
    """Limit for all replicas to load their model."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """Where replicas serve: auto (the visible GPUs, round-robin; else the CPU), cpu, cuda or cuda:N."""

    @model_validator(mode="after")
    def _arrival_needs_rate(self) -> "ServingLoadConfig":
        if self.arrival != "closed" and self.rate <= 0:
            raise ValueError("open-loop arrivals need rate > 0")
        return self


def new_api_key() -> str:
    return secrets.token_urlsafe(32)


@contextmanager
def private_dir() -> Iterator[Path]:
    """A 0700 directory for the API key and TLS key, removed afterwards (never under the report directory)."""
    path = Path(tempfile.mkdtemp(prefix="dcforge-serving-"))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_secret(directory: Path, name: str, content: bytes) -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return path


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A one-day certificate for `host` (an IP SAN), so the check can serve and probe HTTPS locally."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path = write_secret(directory, "tls.crt", certificate.public_bytes(serialization.Encoding.PEM))
    key_path = write_secret(directory, "tls.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class ModelChoice:
    source: str
    """"random:<preset>" or "trained:<checkpoint dir>"."""
    checkpoint: Path | None
    context_len: int


def choose_model(ctx: CheckContext, config: ServingLoadConfig) -> ModelChoice:
    from workloads.model import get_preset

    trained = ctx.outputs.require("trained_checkpoint_dir") if config.model_source == "trained" \
        else ctx.outputs.trained_checkpoint_dir
    if config.model_source != "random" and trained:
        from workloads.checkpointing import latest_checkpoint, read_marker

        found = latest_checkpoint(trained)
        if found is not None:
            context = int(read_marker(found[1])["model_config"].get("max_seq_len", 256))
            return ModelChoice(f"trained:{trained}", Path(trained), context)
    return ModelChoice(f"random:{config.preset}", None, get_preset(config.preset).max_seq_len)


def fitted_prompt_tokens(config: ServingLoadConfig, context_len: int,
                         spread: float = LOAD_DEFAULTS.prompt_tokens_spread) -> int:
    """The configured prompt length, shrunk when needed so the longest prompt plus answer fits the context."""
    room = context_len - config.max_tokens - CHAT_TEMPLATE_TOKENS
    if room < 2:
        raise ValueError(f"maxTokens {config.max_tokens} leaves no room for a prompt in a {context_len}-token "
                         "context")
    return max(1, min(config.prompt_tokens, int(room / (1 + spread))))


class LocalServer:
    """`python -m workloads.serve` on 127.0.0.1 under gunicorn, its whole process group stopped on exit."""

    def __init__(self, config: ServingLoadConfig, model: ModelChoice, secrets_dir: Path, workdir: Path,
                 api_key: str):
        self.config = config
        self.port = free_port()
        self.state_dir = workdir / "server-state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "server.log"
        key_file = write_secret(secrets_dir, "api-key", api_key.encode())
        args = [sys.executable, "-m", "workloads.serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--replicas", str(config.replicas), "--max-batch", str(config.max_batch),
                "--max-wait-ms", str(config.max_wait_ms), "--state-dir", str(self.state_dir),
                "--device", config.device]
        args += ["--checkpoint", str(model.checkpoint)] if model.checkpoint else ["--preset", config.preset]
        self.ca_file: Path | None = None
        if config.tls:
            cert, key = self_signed_certificate(secrets_dir)
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
            self.ca_file = cert
        env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, "PROMETHEUS_MULTIPROC_DIR")}
        env.update({API_KEY_FILE_ENV: str(key_file), "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"})
        self.process = ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=self.log_path, grace_s=5.0)
        self.base_url = f"{'https' if config.tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> "LocalServer":
        self.process.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.process.stop()

    def worker_pids(self) -> list[int]:
        return child_pids(self.process.pid)

    def ready_pids(self) -> list[int]:
        ready = ready_replicas(self.state_dir)
        return [pid for pid in self.worker_pids() if pid in ready]

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until all replicas have loaded their model."""
        return self._wait(lambda: len(self.ready_pids()) >= self.config.replicas, timeout_s)

    def wait_respawn(self, old_pids: set[int], timeout_s: float) -> tuple[int, float]:
        """The pid of a replica that was not among `old_pids` once it is ready, and the seconds it took."""
        fresh: list[int] = []

        def respawned() -> bool:
            fresh[:] = [pid for pid in self.ready_pids() if pid not in old_pids]
            return bool(fresh)

        seconds = self._wait(respawned, timeout_s)
        return fresh[0], seconds

    def _wait(self, condition, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.poll()}: {self.log_tail()}")
            if condition():
                return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.ready_pids())}/{self.config.replicas} replicas ready after {timeout_s:.0f} s: "
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def scrape_metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.base_url}/metrics", verify=False, timeout=10).text


def warm_up(server: LocalServer, api_key: str, model: str, count: int, max_tokens: int) -> None:
    """A few requests so lazy initialisation stays out of the measured run; a failure here is an error."""
    import httpx

    with httpx.Client(base_url=server.base_url, verify=False, timeout=60,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        for i in range(count):
            response = client.post("/v1/completions", json={"model": model, "prompt": f"warm-up {i}",
                                                            "max_tokens": max_tokens})
            if response.status_code != 200:
                raise RuntimeError(f"warm-up request failed with {response.status_code}: {response.text[:200]}")


def locust_process(config: ServingLoadConfig, server: LocalServer, secrets_dir: Path, workdir: Path,
                   prompt_tokens: int, model: str) -> tuple[ManagedProcess, Path]:
    """Locust headless in its own process group (gevent monkey-patching stays out of this process)."""
    request_log_dir = workdir / "requests"
    shutil.rmtree(request_log_dir, ignore_errors=True)  # a reused report directory must not mix in old runs
    request_log_dir.mkdir(parents=True)
    args = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--host", server.base_url, "-u", str(config.users), "-r", str(config.spawn_rate),
            "-t", f"{config.duration_s:g}s", "--exit-code-on-error", "0"]
    if config.locust_processes > 1:
        args += ["--processes", str(config.locust_processes)]
    env = {k: v for k, v in os.environ.items() if k != LOAD_API_KEY_ENV}
    env.update({LoadEnv.API_KEY_FILE: str(secrets_dir / "api-key"), LoadEnv.MODEL: model,
                LoadEnv.ENDPOINT: config.endpoint, LoadEnv.PROMPT_TOKENS: str(prompt_tokens),
                LoadEnv.MAX_TOKENS: str(config.max_tokens), LoadEnv.ARRIVAL: config.arrival,
                LoadEnv.RATE: str(config.rate), LoadEnv.TIMEOUT: str(config.request_timeout_s),
                LoadEnv.REQUEST_LOG: str(request_log_dir / REQUEST_LOG_TEMPLATE), "PYTHONPATH": str(REPO_ROOT)})
    return ManagedProcess(args, env=env, cwd=REPO_ROOT, log_path=workdir / "locust.log"), request_log_dir


def add_summary_metrics(result: CheckResult, summary: dict[str, float]) -> None:
    """Every entry of `loadtests.metrics.summarize` as a metric declared in `_load_metrics.LOAD_METRICS`."""
    from dcforge.checks._load_metrics import SUMMARY_NOT_REPORTED

    for key, value in summary.items():
        if key not in SUMMARY_NOT_REPORTED:
            result.add_metric(key, value)


def latency_plots(records: list[RequestRecord], t0: float, markers: list[dict[str, Any]] | None = None) -> list[Plot]:
    """Per-second p95 latency and RPS over time, and TTFT/TPOT histograms."""
    from loadtests.metrics import latencies_ms, windows

    t1 = max((r.end for r in records), default=t0)
    series = windows(records, t0, t1)
    x = [round(w.start - t0, 3) for w in series]
    ttft_by_window = windows([dataclasses.replace(r, e2e_s=r.ttft_s) for r in records if r.ttft_s is not None], t0, t1)
    samples = latencies_ms(records)
    return [
        Plot("Latency over time (requests by send second)", "seconds since load start", "p95 latency (ms)",
             [Series("e2e p95", x, [w.p95_ms for w in series]),
              Series("TTFT p95", x, [w.p95_ms for w in ttft_by_window])], markers=list(markers or [])),
        Plot("Requests per second", "seconds since load start", "requests/s",
             [Series("sent", x, [float(w.requests) for w in series]),
              Series("failed", x, [float(w.failed) for w in series])], markers=list(markers or [])),
        Plot("TTFT distribution", "TTFT (ms)", "requests", [Series("TTFT", [], samples["ttft_ms"])], kind="histogram"),
        Plot("TPOT distribution", "TPOT (ms)", "requests", [Series("TPOT", [], samples["tpot_ms"])], kind="histogram"),
    ]


def decode_batch_mean(metrics_text: str) -> float | None:
    """Mean sequences per decode forward pass, from the server's Prometheus histogram."""
    total = count = None
    for line in metrics_text.splitlines():
        if line.startswith('dcforge_batch_size_sum{phase="decode"}'):
            total = float(line.split()[-1])
        elif line.startswith('dcforge_batch_size_count{phase="decode"}'):
            count = float(line.split()[-1])
    return total / count if total is not None and count else None


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
    """Locust for duration_s; `during(t_start)` runs in this thread meanwhile. Returns (records, load start)."""
    from loadtests.llm_protocol import read_records

    locust, log_dir = locust_process(config, session.server, session.secrets_dir, session.workdir,
                                     session.prompt_tokens, session.served_name)
    result.artefacts["locust_log"] = ctx.relative(session.workdir / "locust.log")
    ctx.log(f"Locust: {config.users} users, {config.arrival} arrivals, {config.duration_s:g} s")
    t_start = time.time()
    with locust:
        if during is not None:
            during(t_start)
        code = locust.wait(timeout=min(config.duration_s + 60, max(5.0, ctx.remaining_s())))
    if code != 0:
        raise RuntimeError(f"Locust exited with code {code}; see {ctx.relative(session.workdir / 'locust.log')}")
    paths = sorted(log_dir.glob("*.jsonl"))
    records = read_records(paths)
    if not records:
        raise RuntimeError("Locust recorded no requests; see the Locust log")
    merged = session.workdir / "requests.jsonl"
    merged.write_text("".join(p.read_text() for p in paths))
    result.artefacts["request_log"] = ctx.relative(merged)
    return records, t_start
