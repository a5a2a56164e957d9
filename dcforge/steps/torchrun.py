"""What the torch checks share: their settings base, launching torchrun safely, percentiles, the CPU peak.

torchrun always runs inside a ManagedProcess (its whole process group dies with the check) with a hard timeout,
and with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: elastic restarts hang on this platform without it. The timeout is
what is left of the check's own limit (`dcforge:acceptance.timeoutsS.<check>`), less the time to stop torchrun, so
a hung run ends with torchrun's log tail rather than a bare runner timeout.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.processes import ManagedProcess
from dcforge.paths import WORKLOADS_DIR

TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
"""What every torchrun an executor starts gets (the module docstring says why)."""
TORCHRUN_STOP_MARGIN_S = 10.0
"""Kept from the check's remaining time when torchrun is started: the SIGTERM grace of its process group (5 s)
plus reading its log, so torchrun's own timeout fires before the runner's."""


def check_preset(value: str) -> str:
    from workloads.model import PRESETS  # imports torch (~1 s): the price of one preset table for all users

    if value not in PRESETS:
        raise ValueError(f"unknown model preset {value!r}; known presets: {', '.join(PRESETS)}")
    return value


class TorchCheckConfig(CheckConfig):
    """Settings every torchrun check has. The time limit is not one of them: it is the runner's
    `dcforge:acceptance.timeoutsS.<check>` (torchrun gets what is left of it)."""

    min_nproc: ClassVar[int] = 1
    """The fewest ranks the check can measure anything with."""
    moved_keys: ClassVar[dict[str, str]] = {"timeoutS": "dcforge:acceptance.timeoutsS.{check}"}

    nproc_per_node: int | None = Field(default=None)
    """Ranks to launch; default one per GPU, or 2 on CPU."""

    @field_validator("nproc_per_node")
    @classmethod
    def _enough_ranks(cls, value: int | None) -> int | None:
        if value is not None and value < cls.min_nproc:
            raise ValueError(f"must be >= {cls.min_nproc} (got {value})")
        return value

    def nproc(self) -> int:
        return self.nproc_per_node or default_nproc()


class ModelTorchCheckConfig(TorchCheckConfig):
    """A torchrun check of the bundled GPT: adds the model preset."""

    preset: str = "tiny"
    """Model size (workloads.model.PRESETS)."""

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return check_preset(value)


class TorchrunFailed(RuntimeError):
    """torchrun exited non-zero or ran out of time; the message carries the tail of its log."""


def default_nproc(cpu_ranks: int = 2) -> int:
    """One rank per visible GPU, else `cpu_ranks` (two: enough to exercise collectives on a small machine)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    return cpu_ranks


def torchrun_command(script: str, args: list[str], nproc: int, max_restarts: int = 0,
                     python: str = sys.executable, workloads_dir: str = str(WORKLOADS_DIR)) -> list[str]:
    """A single-node torchrun; `python` and `workloads_dir` may be executor templates (`{python}`, `workloads`
    relative to `{workdir}`) for a node elsewhere."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "--monitor-interval=0.2", f"{workloads_dir}/{script}", *args]


def socket_env(ifname: str | None) -> dict[str, str]:
    """Pins gloo's and NCCL's sockets to one interface (None: their own choice)."""
    return {"GLOO_SOCKET_IFNAME": ifname, "NCCL_SOCKET_IFNAME": ifname} if ifname else {}


def torchrun_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # ranks set their own thread count; this silences torchrun's banner
    return env


def run_torchrun(ctx: CheckContext, script: str, args: list[str], *, nproc: int, log_path: Path,
                 max_restarts: int = 0) -> float:
    """Run to completion within the check's remaining time; returns wall seconds. Raises TorchrunFailed on a
    non-zero exit or timeout."""
    timeout_s = max(1.0, ctx.remaining_s() - TORCHRUN_STOP_MARGIN_S)
    command = torchrun_command(script, args, nproc, max_restarts)
    ctx.log(f"torchrun {script} x{nproc}: {' '.join(args)}")
    started = time.monotonic()
    with ManagedProcess(command, env=torchrun_env(), log_path=log_path) as process:
        try:
            code = process.wait(timeout_s)
        except TimeoutError:
            raise TorchrunFailed(f"torchrun {script} did not finish within {timeout_s:.0f} s (what was left of "
                                 f"the check's dcforge:acceptance.timeoutsS); log tail:\n{log_tail(log_path)}") \
                from None
    if code != 0:
        raise TorchrunFailed(f"torchrun {script} exited with {code}; log tail:\n{log_tail(log_path)}")
    return time.monotonic() - started


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in text if "error" in line.lower()]
    return "\n".join((errors[-3:] if errors else []) + text[-lines:])


MATMUL_PEAK_FORMULA = "peak = max over n of 2·n³ / t(matmul n×n, fp32)"


def cpu_matmul_peak_flops(threads: int, sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 0.3) -> float:
    """Measured fp32 matmul FLOP/s with `threads` intra-op threads: the CPU's MFU peak (docs/metrics.md#train)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    try:
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            a @ b  # warm-up: thread pool start, page faults
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                a @ b
                runs += 1
            best = max(best, 2 * n**3 * runs / (time.perf_counter() - started))
    finally:
        torch.set_num_threads(previous)
    return best


def cpu_peak_per_rank(ctx: CheckContext, nproc: int) -> float:
    """The matmul peak of one rank's share of the cores, measured once per run and shared between checks."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    peaks = ctx.outputs.cpu_matmul_peak_flops
    if threads not in peaks:
        peaks[threads] = cpu_matmul_peak_flops(threads)
    return peaks[threads]
