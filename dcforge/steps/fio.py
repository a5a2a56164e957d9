"""fio as a measuring instrument: job descriptions, one run per job, JSON output parsed into typed results.

The same `FioJob`s run on this machine and, on the Kubernetes target, in a pod on a claim of each class (the storage
check runs its own measurement there: `python -m dcforge.checks.storage`), so both targets measure with identical
parameters.

fio's JSON (`--output-format=json`, fio 3.x): one entry per job under `jobs`, each with `read`, `write` (bytes,
bytes/s, IOPS, latency percentiles) and `sync` (fsync latency; filled when `fsync=N` is set). With
`group_reporting`, the clients of one job (`numjobs`) are summed into one entry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dcforge.harness.processes import ManagedProcess

FIO_INSTALL_HINT = "install it with `apt-get install fio` (or `make system-deps` as root)"
# The p99 key in fio's percentile tables (fio formats the percentile list with six decimals).
P99 = "99.000000"


class FioNotFound(Exception):
    """No fio executable on PATH."""


class FioError(Exception):
    """fio ran and reported an error (exit status, or a job's error field); the message is one line."""


class FioVerifyFailed(FioError):
    """fio's verify found data that differs from what was written: the storage corrupted it."""


@dataclass(frozen=True)
class FioJob:
    """One fio job; fields are fio's own option names (see `man fio`)."""

    name: str
    directory: str
    rw: str
    bs: str
    size: str
    filename: str | None = None
    """Fixed file name inside `directory`, so a later job (read, verify) finds what an earlier one wrote."""
    ioengine: str = "psync"
    iodepth: int = 1
    direct: bool = False
    numjobs: int = 1
    runtime_s: float | None = None
    """Upper bound on the job's time; without `time_based` the job also ends when `size` is done."""
    fsync: int = 0
    """fsync after this many writes (1: every write is synchronous; fio reports its latency under `sync`)."""
    end_fsync: bool = False
    verify: str | None = None
    do_verify: bool = True
    verify_only: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def args(self) -> list[str]:
        """fio command-line arguments for this job (without the fio executable)."""
        options: dict[str, str] = {
            "name": self.name, "directory": self.directory, "rw": self.rw, "bs": self.bs, "size": self.size,
            "ioengine": self.ioengine, "iodepth": str(self.iodepth), "direct": "1" if self.direct else "0",
            "numjobs": str(self.numjobs), "group_reporting": "1",
        }
        if self.filename:
            options["filename"] = self.filename
        if self.runtime_s is not None:
            options["runtime"] = f"{max(1, round(self.runtime_s * 1000))}ms"
        if self.fsync:
            options["fsync"] = str(self.fsync)
        if self.end_fsync:
            options["end_fsync"] = "1"
        if self.verify:
            options["verify"] = self.verify
            options["do_verify"] = "1" if self.do_verify else "0"
            options["verify_fatal"] = "1"
            options["verify_dump"] = "0"
            options["verify_state_save"] = "0"  # else fio leaves *-verify.state files in its working directory
        if self.verify_only:
            options["verify_only"] = "1"
        options.update(dict(self.extra))
        return [*(f"--{key}={value}" for key, value in options.items()), "--output-format=json"]


@dataclass
class FioDirection:
    """One direction (read or write) of a job's I/O as fio reports it."""

    io_bytes: int
    bw_bytes: float
    """Bytes per second over the job's runtime."""
    iops: float
    total_ios: int
    runtime_ms: int
    lat_p99_ns: float | None

    @property
    def gbps(self) -> float:
        return self.bw_bytes / 1e9


@dataclass
class FioJobResult:
    name: str
    error: int
    read: FioDirection
    write: FioDirection
    sync_total: int = 0
    sync_lat_percentiles_ns: dict[str, float] = field(default_factory=dict)
    """fsync latency percentiles, keyed like fio ('99.000000'); empty when the job did no fsync per write."""

    @property
    def sync_p99_ms(self) -> float | None:
        value = self.sync_lat_percentiles_ns.get(P99)
        return None if value is None else value / 1e6


def _direction(data: dict) -> FioDirection:
    percentiles = (data.get("clat_ns") or {}).get("percentile") or {}
    return FioDirection(io_bytes=int(data.get("io_bytes", 0)), bw_bytes=float(data.get("bw_bytes", 0.0)),
                        iops=float(data.get("iops", 0.0)), total_ios=int(data.get("total_ios", 0)),
                        runtime_ms=int(data.get("runtime", 0)),
                        lat_p99_ns=float(percentiles[P99]) if P99 in percentiles else None)


def parse_fio_json(text: str) -> list[FioJobResult]:
    """Jobs of one fio JSON report. fio may print warnings before the JSON object; they are skipped."""
    start = text.find("{")
    if start < 0:
        raise FioError("fio printed no JSON report")
    try:
        report = json.loads(text[start:])
    except ValueError as error:
        raise FioError(f"fio's JSON report is unreadable: {error}") from None
    results = []
    for job in report.get("jobs", []):
        sync = job.get("sync") or {}
        percentiles = (sync.get("lat_ns") or {}).get("percentile") or {}
        results.append(FioJobResult(
            name=str(job.get("jobname", "")), error=int(job.get("error", 0)),
            read=_direction(job.get("read", {})), write=_direction(job.get("write", {})),
            sync_total=int(sync.get("total_ios", 0)),
            sync_lat_percentiles_ns={key: float(value) for key, value in percentiles.items()}))
    if not results:
        raise FioError("fio's JSON report has no jobs")
    return results


def fio_executable() -> str:
    found = shutil.which("fio")
    if not found:
        raise FioNotFound(f"fio is not installed (not on PATH); {FIO_INSTALL_HINT}")
    return found


def fio_version(executable: str) -> str:
    return subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()


def _error_line(stderr: str, stdout: str) -> str:
    """The first line of fio's complaint that says what went wrong (fio prints errors to stderr or into stdout)."""
    lines = [line.strip() for line in (stderr + "\n" + stdout.split("{", 1)[0]).splitlines() if line.strip()]
    for marker in ("verify failed", "bad header", "verify:", "No space left", "Permission denied", "err=", "error"):
        for line in lines:
            if marker.lower() in line.lower():
                return line[:300]
    return lines[0][:300] if lines else "no message"


def run_fio(job: FioJob, timeout_s: float, executable: str | None = None) -> FioJobResult:
    """Run one job to completion and return its parsed result; FioError (one line) when fio reports an error.

    fio runs as a ManagedProcess (its own process group, killed with the check on a timeout or Ctrl-C, clients
    included), in a scratch working directory, with the JSON report in its own file (`--output`) and its
    messages in a log beside it."""
    command = [executable or fio_executable(), *job.args()]
    with tempfile.TemporaryDirectory(prefix="dcforge-fio-") as scratch:
        report, log = Path(scratch) / "report.json", Path(scratch) / "fio.log"
        with ManagedProcess([*command, f"--output={report}"], cwd=scratch, log_path=log) as process:
            try:
                returncode = process.wait(timeout_s)
            except TimeoutError:
                raise FioError(f"fio job {job.name!r} in {job.directory} ran past {timeout_s:g} s") from None
        messages = log.read_text(errors="replace") if log.exists() else ""
        text = report.read_text(errors="replace") if report.exists() else ""
    results = None
    try:
        results = parse_fio_json(text)
    except FioError:
        if returncode == 0:
            raise
    failed = returncode != 0 or results is None or any(r.error for r in results)
    if failed:
        code = next((r.error for r in results or [] if r.error), 0)
        if "verify failed" in messages or "bad header" in messages:
            raise FioVerifyFailed(f"fio verify of {job.directory}: {_error_line(messages, text)}")
        # fio's own line (e.g. "No space left on device") names the cause better than the bare errno.
        reason = _error_line(messages, text) if messages.strip() else os.strerror(code)
        raise FioError(f"fio job {job.name!r} in {job.directory} failed (exit {returncode}): {reason}")
    assert results is not None
    return results[0]
