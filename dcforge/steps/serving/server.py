"""The bundled server on 127.0.0.1 under gunicorn: its start, its replica processes, readiness and respawns."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from dcforge.steps.serving.credentials import self_signed_certificate, write_secret
from dcforge.steps.serving.settings import ModelChoice, ServingLoadConfig
from dcforge.harness.processes import ManagedProcess
from dcforge.paths import REPO_ROOT
from workloads.records import ready_replicas
from workloads.serving.settings import API_KEY_ENV, API_KEY_FILE_ENV

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


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
                "--device", config.device, "--balance", config.balance, "--quantize", config.quantize]
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


def send_completions(server: LocalServer, api_key: str, model: str, count: int, max_tokens: int) -> None:
    """`count` non-streamed completions one after the other (the monitoring check's traffic between two scrapes);
    a failure is an error. The load checks' warm-up is the load generator's own (loadtests/warmup.py)."""
    import httpx

    with httpx.Client(base_url=server.base_url, verify=False, timeout=60,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        for i in range(count):
            response = client.post("/v1/completions", json={"model": model, "prompt": f"request {i}",
                                                            "max_tokens": max_tokens})
            if response.status_code != 200:
                raise RuntimeError(f"warm-up request failed with {response.status_code}: {response.text[:200]}")
