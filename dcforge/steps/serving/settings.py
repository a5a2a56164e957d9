"""Settings shared by `inference` and `inference_failover`, and which model the server loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

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
    warmup_per_replica: int = Field(default=LOAD_DEFAULTS.warmup_per_replica, ge=0, le=100)
    """Warm-up requests per replica before measuring: the load generator's users send them (streamed, the measured
    requests' shape) until every replica answered this many (at most 4x that many in all), then Locust's statistics
    are reset and the `durationS` window starts. In the request log, marked `warmup`; in no statistic."""
    endpoint: Literal["chat", "completions"] = LOAD_DEFAULTS.endpoint  # type: ignore[assignment]
    prompt_tokens: int = Field(default=LOAD_DEFAULTS.prompt_tokens, ge=1)
    """Mean prompt length in tokens (uniform within promptTokens x (1 +/- promptTokensSpread))."""
    prompt_tokens_spread: float = Field(default=LOAD_DEFAULTS.prompt_tokens_spread, ge=0, lt=1)
    """Prompt lengths are uniform in promptTokens x (1 +/- this) (vLLM's --random-range-ratio); 0: fixed."""
    max_tokens: int = Field(default=LOAD_DEFAULTS.max_tokens, ge=1)
    """Mean tokens generated per request (EOS ignored, so an answer has exactly the requested number)."""
    max_tokens_spread: float = Field(default=0.0, ge=0, lt=1)
    """Output lengths are uniform in maxTokens x (1 +/- this); 0 (the default): every answer has maxTokens."""
    prompt_file: str | None = None
    """A JSONL file of prompts (`{"prompt": "..."}` or AIPerf's `{"text": "..."}`, optional `"max_tokens"` or
    `"output_tokens"`), sent in random order instead of generated ones; relative to the environment file."""
    shared_prefixes: int = Field(default=0, ge=0, le=64)
    """Shared-prefix workload: every prompt starts with one of this many long system prompts (0: off), so a server
    with prefix caching can reuse them."""
    shared_prefix_tokens: int = Field(default=128, ge=1)
    """Length of each shared system prompt."""
    request_timeout_s: float = Field(default=LOAD_DEFAULTS.request_timeout_s, gt=0)
    """A request slower than this counts as failed."""
    goodput: str | None = None
    """Per-request SLOs a request must meet to count towards goodput, as vLLM's `--goodput`: "ttft:MS tpot:MS
    e2el:MS" (any of them); None: every successful request counts."""
    tls: bool = False
    """Serve HTTPS with a self-signed certificate (and check the TLS 1.2 floor)."""
    workers: int = Field(default=1, ge=1, le=64)
    """Load-generator worker processes: Locust's own master/worker mode (`--processes N`: one master, N forked
    workers, users and open-loop rate split among them), each worker writing its own request log, merged after the
    run (request ids unique across workers, docs/serving.md#many-workers); 1 runs Locust in a single process."""
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
    turns: int = Field(default=1, ge=1, le=64)
    """Multi-turn chat (closed loop, chat endpoint): each user's conversation has this many turns, every turn
    sending the history with the server's real answers (loadtests/conversation.py); prompts are sized so the last
    turn fits the context. 1: single-turn requests."""
    server_metrics_interval_s: float = Field(default=0.5, ge=0, le=60)
    """Seconds between scrapes of the server's Prometheus /metrics during the load (KV-cache usage, requests
    running and waiting, preemptions, prefix-cache hits; loadtests/server_metrics.py); 0: not scraped."""
    stop_grace_s: float = Field(default=pacing.STOP_GRACE_S, ge=0)
    """Requests in flight when durationS ends may complete within this and are counted; later ones are reported
    as abandoned."""

    moved_keys: ClassVar[dict[str, str]] = {
        "warmupRequests": "dcforge:acceptance.settings.{check}.warmupPerReplica",
        "goodputTtftMs": "dcforge:acceptance.settings.{check}.goodput (\"ttft:MS tpot:MS\")",
        "goodputTpotMs": "dcforge:acceptance.settings.{check}.goodput (\"ttft:MS tpot:MS\")",
        "locustProcesses": "dcforge:acceptance.settings.{check}.workers",
    }

    @field_validator("goodput")
    @classmethod
    def _goodput_as_vllm_writes_it(cls, value: str | None) -> str | None:
        from loadtests.metrics import parse_goodput

        if value is not None:
            parse_goodput(value)  # ValueError: one line naming the expected form
        return value

    def request_slo(self):
        """The goodput limits as loadtests.metrics.RequestSlo."""
        from loadtests.metrics import RequestSlo, parse_goodput

        return parse_goodput(self.goodput) if self.goodput else RequestSlo()

    @model_validator(mode="after")
    def _arrival_needs_rate(self) -> "ServingLoadConfig":
        if self.arrival != "closed" and self.rate <= 0:
            raise ValueError("open-loop arrivals need rate > 0")
        return self

    @model_validator(mode="after")
    def _turns_are_closed_loop_chat(self) -> "ServingLoadConfig":
        if self.turns > 1 and (self.endpoint != "chat" or self.arrival != "closed"):
            raise ValueError(f"turns {self.turns} needs endpoint chat and arrival closed (a conversation waits for "
                             f"each answer), got endpoint {self.endpoint}, arrival {self.arrival}")
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


def longest_output_tokens(config: ServingLoadConfig) -> int:
    return max(1, round(config.max_tokens * (1 + config.max_tokens_spread)))


def fitted_prompt_tokens(config: ServingLoadConfig, context_len: int) -> int:
    """The configured prompt length, shrunk when needed so the longest prompt (with its shared prefix) plus the
    longest answer fits the context -- with `turns`, so the last turn does: every turn's question and answer."""
    prefix = config.shared_prefix_tokens if config.shared_prefixes else 0
    room = context_len - config.turns * (longest_output_tokens(config) + CHAT_TEMPLATE_TOKENS) - prefix
    if room < 2 * config.turns:
        raise ValueError(f"maxTokens {config.max_tokens} (spread {config.max_tokens_spread:g})"
                         + (f" and sharedPrefixTokens {prefix}" if prefix else "")
                         + (f" over {config.turns} turns" if config.turns > 1 else "")
                         + f" leave no room for a prompt in a {context_len}-token context")
    return max(1, min(config.prompt_tokens, int(room / config.turns / (1 + config.prompt_tokens_spread))))
