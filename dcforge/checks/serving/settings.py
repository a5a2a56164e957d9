"""Settings shared by `inference` and `inference_failover`, and which model the server loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dcforge.harness.check import CheckConfig, CheckContext
from loadtests import arrivals, pacing
from workloads.records import LOAD_DEFAULTS
from workloads.serving.settings import Quantize

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
    burstiness: float = Field(default=arrivals.BURSTINESS, gt=0)
    """Poisson arrivals: gamma shape of the gaps, mean 1/rate (vLLM's `--burstiness`): 1 is Poisson, below 1
    burstier, above 1 more regular (loadtests/arrivals.py)."""
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
    quantize: Quantize = "none"
    """Weights the server serves (`--quantize`): none (fp32 as loaded) or int8 (dynamic int8 quantization of every
    Linear, the `compression` check's model; CPU only, so `device` must be auto or cpu)."""
    balance: Literal["requests", "connections"] = "requests"
    """How the server spreads load over its replicas (docs/serving.md): requests (one request per connection) or
    connections (keep-alive; a replica may be left idle)."""
    think_time_s: float = Field(default=pacing.THINK_TIME_S, ge=0)
    """Closed loop: mean wait between an answer and the user's next request; 0: lockstep users."""
    think_distribution: Literal["exponential", "constant"] = pacing.THINK_DISTRIBUTION
    start_jitter_s: float = Field(default=pacing.START_JITTER_S, ge=0)
    """Closed loop: each user's first request waits uniform(0, startJitterS)."""
    stop_grace_s: float = Field(default=pacing.STOP_GRACE_S, ge=0)
    """Requests in flight when durationS ends may complete within this and are counted; later ones are reported
    as abandoned."""

    @model_validator(mode="after")
    def _arrival_needs_rate(self) -> "ServingLoadConfig":
        if self.arrival != "closed" and self.rate <= 0:
            raise ValueError("open-loop arrivals need rate > 0")
        return self

    @model_validator(mode="after")
    def _int8_on_cpu(self) -> "ServingLoadConfig":
        if self.quantize == "int8" and self.device not in ("auto", "cpu"):
            raise ValueError(f"quantize int8 runs on the CPU only; device must be auto or cpu, got {self.device!r}")
        return self


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
