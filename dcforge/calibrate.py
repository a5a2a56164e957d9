"""`dcforge calibrate`: run an environment's checks N times on nodes known to be good and write a threshold profile.

For every directional metric (one with `better`): median and spread of the N values, and a proposed threshold
median − k·spread for higher-is-better metrics (`>=`), median + k·spread for lower-is-better ones (`<=`).
spread = sample standard deviation (0 with one run). The profile is marked calibrated and records date, host and
versions; point `dcforge:acceptance.profile` at the file to judge later runs against it.
"""

from __future__ import annotations

import datetime as dt
import platform
import re
import socket
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from dcforge.harness.result import Better, Status


@dataclass(frozen=True)
class Calibration:
    metric: str
    better: Better
    unit: str
    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def proposed(self, k: float) -> tuple[str, float]:
        """(op, threshold): direction-aware median ∓ k·spread."""
        if self.better == "higher":
            return ">=", self.median - k * self.spread
        return "<=", self.median + k * self.spread


def collect(runs: list[dict[str, object]]) -> tuple[list[Calibration], list[str]]:
    """Directional metrics of passing checks over the runs' `CheckResult`s ({check: result}), and why others were
    left out. A metric is calibrated only when every run measured it: a node that failed once is not 'good'."""
    values: dict[str, list[float]] = {}
    meta: dict[str, tuple[Better, str]] = {}
    left_out: list[str] = []
    for number, results in enumerate(runs, start=1):
        for name, result in results.items():
            if result.status != Status.PASS:
                left_out.append(f"run {number}: {name} {result.status.value}"
                                + (f" ({result.reason})" if result.reason else ""))
                continue
            for metric_name, metric in result.metrics.items():
                if metric.better is None:
                    continue
                key = f"{name}.{metric_name}"
                values.setdefault(key, []).append(metric.value)
                meta[key] = (metric.better, metric.unit)
    calibrations = []
    for key, measured in values.items():
        if len(measured) < len(runs):
            left_out.append(f"{key}: measured in {len(measured)} of {len(runs)} runs")
            continue
        calibrations.append(Calibration(key, meta[key][0], meta[key][1], tuple(measured)))
    return calibrations, left_out


def profile_document(name: str, calibrations: list[Calibration], *, k: float, gpu_model: str | None,
                     gpus_per_node: int, fabric: str, versions: dict[str, str], env_file: str) -> dict:
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    host = socket.gethostname()
    runs = len(calibrations[0].values) if calibrations else 0
    thresholds = {}
    for calibration in calibrations:
        op, threshold = calibration.proposed(k)
        thresholds[calibration.metric] = {
            "op": op, "value": round(threshold, 6), "unit": calibration.unit, "tolerance": 0.0,
            "status": "calibrated",
            "source": f"dcforge calibrate on {host}, {date}: {runs} runs, median {calibration.median:.6g}, "
                      f"spread {calibration.spread:.6g}, threshold = median {'-' if op == '>=' else '+'} "
                      f"{k:g} x spread",
            "median": round(calibration.median, 6), "spread": round(calibration.spread, 6),
        }
    return {"name": name, "gpuModel": gpu_model, "gpusPerNode": gpus_per_node, "fabric": fabric,
            "thresholds": thresholds, "references": {},
            "calibration": {"date": date, "host": host, "runs": runs, "k": k, "env_file": env_file,
                            "platform": platform.platform(), **{key: str(v) for key, v in versions.items()}}}


def calibrate(loaded, selected: list[str], runs: int, k: float, out: Path, reports_dir: Path,
              log: Callable[[str], None] = print) -> tuple[Path, list[Calibration], list[str]]:
    from dcforge import __version__
    from dcforge.report.provenance import git_commit
    from dcforge.steps.system import torch_versions
    from dcforge.harness.node import visible_gpus
    from dcforge.harness.runner import RunState, run_acceptance, utc_now
    from dcforge.report import build_report, write_report_files
    from dcforge.spec.gpus import gpu_model_for_device_name
    from dcforge.spec.profiles import load_profile_file

    results = []
    for number in range(1, runs + 1):
        report_dir = (reports_dir / f"run-{number}").resolve()
        report_dir.mkdir(parents=True, exist_ok=False)
        state = RunState(env=loaded, report_dir=report_dir, selected=selected, started_at=utc_now())

        def write(current: RunState, directory: Path = report_dir) -> None:
            write_report_files(build_report(current), directory, html=False)

        log(f"calibration run {number}/{runs}: {', '.join(selected)}")
        run_acceptance(state, write, log=lambda line: None)
        if state.interrupted:
            raise KeyboardInterrupt
        results.append({name: state.results[name] for name in selected})
    calibrations, left_out = collect(results)
    pool = loaded.spec.acceptance_pool
    gpus = visible_gpus()
    if pool is not None:
        model, per_node = pool.gpu_model, pool.gpus_per_node
    else:
        known = gpu_model_for_device_name(gpus[0].name) if gpus else None
        model, per_node = (known.name if known else None), len(gpus)
    fabric = "RDMA" if pool is not None and pool.rdma else ("local (no RDMA)" if pool is None else "Ethernet")
    document = profile_document(
        re.sub(r"[^a-z0-9.-]+", "-", out.stem.lower()).strip("-.") or "calibrated", calibrations, k=k,
        gpu_model=model, gpus_per_node=per_node,
        fabric=fabric, env_file=str(loaded.path),
        versions={"dcforge": __version__, "git_commit": git_commit(), **torch_versions(),
                  "driver": gpus[0].driver if gpus and gpus[0].driver else "none"})
    if not calibrations:  # a profile needs at least one threshold: write none rather than an invalid one
        return out, calibrations, left_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Written by `dcforge calibrate`: thresholds proposed from runs on nodes taken to be good.\n"
                   + yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    load_profile_file(out)  # what we write must load back as a valid profile
    return out, calibrations, left_out
