"""Server settings: one typed dataclass, filled from the command line of `workloads/serve.py` or by tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

API_KEY_ENV = "DCFORGE_API_KEY"
"""Environment variable holding the API key (preferred over a command-line flag, which `ps` would show)."""
API_KEY_FILE_ENV = "DCFORGE_API_KEY_FILE"
"""Environment variable naming a file whose first line is the API key."""

BALANCE_MODES = ("requests", "connections")
Balance = Literal["requests", "connections"]
Quantize = Literal["none", "int8"]
"""Weights served: `none` (as loaded, fp32) or `int8` (`workloads.model.quantize_int8`)."""
QUANTIZE_MODES: tuple[str, ...] = get_args(Quantize)
Isolation = Literal["process", "thread"]
"""Where a replica runs its batching engine (`EngineSettings.isolation`)."""
ISOLATION_MODES: tuple[str, ...] = get_args(Isolation)


@dataclass(frozen=True)
class EngineSettings:
    """How requests are batched onto the model."""

    max_batch: int = 16
    """Sequences decoded together in one forward pass (KV-cache slots per replica)."""
    max_wait_ms: float = 5.0
    """When the engine is idle, how long it waits for more requests to batch before the first forward pass."""
    max_context: int | None = None
    """Prompt + generated tokens per sequence; default: the model's max_seq_len."""
    torch_threads: int = 1
    """Intra-op threads per replica: several replicas share the cores, so one each avoids oversubscription."""
    device: str = "auto"
    """`auto` (a CUDA GPU when one is visible, replicas spread over the GPUs; else the CPU), `cpu`, `cuda`,
    `cuda:N`."""
    prefix_caching: bool = True
    """Reuse the keys and values a free slot still holds for a prompt that starts with its tokens (vLLM's
    `--enable-prefix-caching`; `workloads.serving.engine`)."""
    isolation: Isolation = "process"
    """`process`: the engine runs in a child process of the replica (`workloads.serving.engine_process`), so the
    HTTP side never holds the GIL the forward passes need; `thread`: in a thread of the replica's own process (the
    design before, kept so `benchmarks/inference_serving.py` can measure both side by side)."""


@dataclass(frozen=True)
class ModelSettings:
    """Which weights are served."""

    preset: str = "tiny"
    """`workloads.model.PRESETS` name used with random weights."""
    checkpoint: Path | None = None
    """A training checkpoint root (served through workloads.checkpointing.load_for_inference) instead."""
    served_name: str = "dcforge-gpt"
    """The model id clients pass as `model` and `/v1/models` lists."""
    seed: int = 0
    """Seed of the random weights, so every replica serves the same model."""
    quantize: Quantize = "none"
    """none: the weights as loaded (fp32); int8: `workloads.model.quantize_int8` applied once the model is loaded
    (CPU only: with `auto` the replicas serve on the CPU, an explicit CUDA device is refused)."""

    @property
    def precision(self) -> str:
        """What /v1/models and /metrics report as served: `fp32` or `int8`."""
        return "int8" if self.quantize == "int8" else "fp32"


@dataclass(frozen=True)
class LimitSettings:
    """Request limits; a request over any of them gets a 4xx OpenAI-style error."""

    max_body_bytes: int = 1_000_000
    """Largest request body accepted (413 above)."""
    max_prompt_tokens: int = 2048
    """Longest prompt in tokens (400 above), further capped by the context length."""
    max_tokens: int = 512
    """Largest `max_tokens` a request may ask for (400 above)."""
    max_pending: int = 256
    """Requests waiting for a batch slot per replica; more are refused with 429 instead of queueing forever."""


@dataclass(frozen=True)
class ServerSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    api_key: str = field(default="", repr=False)
    """The Bearer key every /v1 request must present. Never printed: repr=False keeps it out of logs."""
    balance: Balance = "requests"
    """requests: every answer closes its connection (`Connection: close`), so each request is accepted afresh by
    whichever replica takes it first and requests spread over the replicas; connections: keep-alive, and a
    connection's requests all stay on the replica that accepted it, which with a few long-lived client
    connections can leave a replica idle."""
    state_dir: Path | None = None
    """Where each replica drops a `ready-<pid>` file once its model is loaded (supervisors wait on these)."""
    replica_tag: str = ""
    """What tells this server's replicas from another server's behind one load balancer (a pod's address on
    Kubernetes, where every pod's worker may have the same pid); empty: the pid alone names a replica."""


def replica_id(tag: str, pid: int | None = None) -> str:
    """How the replica header and /ready name this replica: its pid, as `<tag>/<pid>` when the server has a tag."""
    pid = os.getpid() if pid is None else pid
    return f"{tag}/{pid}" if tag else str(pid)


def read_api_key(environ: dict[str, str] | None = None) -> str:
    """The API key from DCFORGE_API_KEY, else from the file DCFORGE_API_KEY_FILE names; '' when neither is set."""
    environ = os.environ if environ is None else environ
    if environ.get(API_KEY_ENV):
        return environ[API_KEY_ENV].strip()
    key_file = environ.get(API_KEY_FILE_ENV)
    if key_file:
        lines = Path(key_file).read_text().splitlines()
        return lines[0].strip() if lines else ""
    return ""
