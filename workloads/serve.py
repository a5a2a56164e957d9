"""OpenAI-compatible server for the bundled GPT: N replicas (gunicorn worker processes, respawned when one dies),
each a uvicorn/FastAPI app whose continuous-batching engine (KV cache, forward passes) runs in a child process of
its own (`--engine process`; `workloads.serving.engine_process`).

    DCFORGE_API_KEY=secret python -m workloads.serve --replicas 3 --port 8000 [--checkpoint DIR] [--tls-cert ..]
        [--quantize int8]

The API key is read from DCFORGE_API_KEY or from the file DCFORGE_API_KEY_FILE names -- never from the command
line, which `ps` shows to every user. Routes: /v1/models, /v1/completions, /v1/chat/completions (streaming and
not), /health, /ready, /metrics.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from workloads.serving.settings import (BALANCE_MODES, ISOLATION_MODES, QUANTIZE_MODES, EngineSettings,
                                        LimitSettings, ModelSettings, ServerSettings, read_api_key)

WORKER_CLASS = "workloads.serving.worker.ServingWorker"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workloads.serve", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    add("--port", type=int, default=8000)
    add("--replicas", type=int, default=1, help="worker processes; a dead one is respawned")
    add("--preset", default=ModelSettings.preset, help="model preset with random weights")
    add("--checkpoint", type=Path, help="serve this training checkpoint instead of random weights")
    add("--model-name", default=ModelSettings.served_name, help="model id clients must send")
    add("--seed", type=int, default=ModelSettings.seed, help="seed of the random weights")
    add("--max-batch", type=int, default=EngineSettings.max_batch)
    add("--max-wait-ms", type=float, default=EngineSettings.max_wait_ms)
    add("--max-context", type=int, default=None)
    add("--torch-threads", type=int, default=EngineSettings.torch_threads)
    add("--device", default=EngineSettings.device, help="auto (GPUs when visible), cpu, cuda or cuda:N")
    add("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=EngineSettings.prefix_caching,
        help="reuse a free KV slot's cached prefix for a prompt that starts with it (default: on)")
    add("--engine", choices=ISOLATION_MODES, default=EngineSettings.isolation,
        help="process: each replica's batching engine in a process of its own (default); thread: inside the replica")
    add("--quantize", default=ModelSettings.quantize,
        help="none (fp32 as loaded) or int8 (dynamic int8 quantization of every Linear; CPU only)")
    add("--max-body-bytes", type=int, default=LimitSettings.max_body_bytes)
    add("--max-prompt-tokens", type=int, default=LimitSettings.max_prompt_tokens)
    add("--max-tokens", type=int, default=LimitSettings.max_tokens)
    add("--max-pending", type=int, default=LimitSettings.max_pending)
    add("--tls-cert", type=Path, help="PEM certificate; with --tls-key serves HTTPS (TLS >= 1.2 only)")
    add("--tls-key", type=Path)
    add("--state-dir", type=Path, help="where replicas write ready-<pid> files (default: a temporary directory)")
    add("--balance", choices=BALANCE_MODES, default=ServerSettings.balance,
        help="requests: one request per connection, spread over the replicas; connections: keep-alive")
    add("--replica-tag", default="",
        help="name the replicas <tag>/<pid> in the x-dcforge-replica header and /ready (e.g. the pod's address, "
             "where several servers share one load balancer); default: the pid")
    add("--worker-timeout", type=int, default=60, help="seconds without a heartbeat before a replica is replaced")
    add("--log-level", default="info")
    return parser


def settings_from_args(args: argparse.Namespace, api_key: str, state_dir: Path) -> ServerSettings:
    return ServerSettings(
        model=ModelSettings(preset=args.preset, checkpoint=args.checkpoint, served_name=args.model_name,
                            seed=args.seed, quantize=args.quantize),
        engine=EngineSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_context=args.max_context,
                              torch_threads=args.torch_threads, device=args.device,
                              isolation=args.engine, prefix_caching=args.enable_prefix_caching),
        limits=LimitSettings(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                             max_tokens=args.max_tokens, max_pending=args.max_pending),
        api_key=api_key,
        balance=args.balance,
        state_dir=state_dir,
        replica_tag=args.replica_tag,
    )


def validate(args: argparse.Namespace, api_key: str) -> list[str]:
    """Input problems found before any process starts, one line each."""
    from workloads.model import PRESETS  # light: model.py imports torch lazily enough for a CLI check
    from workloads.serving.engine import quantized_on_cuda_error

    problems = []
    if not api_key:
        problems.append("no API key: set DCFORGE_API_KEY or DCFORGE_API_KEY_FILE")
    if args.checkpoint is None and args.preset not in PRESETS:
        problems.append(f"--preset {args.preset!r} is unknown; known: {', '.join(PRESETS)}")
    if args.checkpoint is not None and not args.checkpoint.exists():
        problems.append(f"--checkpoint {args.checkpoint} does not exist")
    if args.quantize not in QUANTIZE_MODES:
        problems.append(f"--quantize {args.quantize!r} is unknown; expected one of: {', '.join(QUANTIZE_MODES)}")
    elif args.quantize == "int8" and args.device != "auto" and not args.device.startswith("cpu"):
        problems.append(quantized_on_cuda_error(args.device))
    if bool(args.tls_cert) != bool(args.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            problems.append(f"{path} is not a file")
    for name in ("replicas", "max_batch", "torch_threads", "max_body_bytes", "max_prompt_tokens", "max_tokens",
                 "max_pending"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    return problems


def gunicorn_options(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.replicas,
        "worker_class": WORKER_CLASS,
        "timeout": args.worker_timeout,
        "graceful_timeout": 5,
        "keepalive": 5,
        "loglevel": args.log_level,
        "proc_name": "dcforge-serve",
        "child_exit": _forget_replica_metrics,
        "post_fork": _die_with_master,
    }
    if args.tls_cert:
        options.update(certfile=str(args.tls_cert), keyfile=str(args.tls_key))
    return options


def _die_with_master(server: object, _worker: object) -> None:
    """In each replica: exit when the master dies, however it died. gunicorn's own check of the parent runs only
    in its sync worker loop, so a SIGKILLed master would otherwise leave uvicorn replicas serving forever."""
    from dcforge.process_lifetime import die_with_parent

    die_with_parent(server.pid)  # type: ignore[attr-defined]


def _forget_replica_metrics(_server: object, worker: object) -> None:
    from workloads.serving.metrics import forget_replica

    forget_replica(worker.pid)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        api_key = read_api_key()
    except OSError as error:
        print(f"error: cannot read the API key file: {error}", file=sys.stderr)
        return 2
    problems = validate(args, api_key)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="dcforge-serve-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    # Must be set before prometheus_client is imported anywhere, in this process and in the forked replicas.
    metrics_dir = state_dir / "prometheus"
    metrics_dir.mkdir(exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    settings = settings_from_args(args, api_key, state_dir)

    from gunicorn.app.base import BaseApplication

    class Supervisor(BaseApplication):
        """gunicorn's arbiter: forks `replicas` workers and forks a new one whenever a worker dies."""

        def load_config(self) -> None:
            for key, value in gunicorn_options(args).items():
                self.cfg.set(key, value)

        def load(self):  # runs in each worker after the fork: every replica loads its own model
            from workloads.serving.app import create_app

            return create_app(settings)

    Supervisor().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
