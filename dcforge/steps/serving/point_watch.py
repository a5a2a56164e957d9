"""Early stop of a load point: while its Locust runs, the server's waiting queue (its /metrics) and the request log
written so far are judged by `loadtests.saturation.over_saturation` every `interval_s`; when a limit is passed,
Locust is interrupted (SIGINT: it ends its window, lets requests in flight finish within the grace period and
writes its logs, as at the end of a normal window) and the reason is kept for the point's verdict."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from dcforge.harness.check import CheckConfig
from dcforge.harness.processes import ManagedProcess
from loadtests.saturation import EarlyStop, over_saturation
from loadtests.server_metrics import Scraper


@dataclass
class PointWatch:
    base_url: str
    limits: EarlyStop
    interval_s: float = 0.5
    stop_reason: str = ""

    def follow(self, locust: ManagedProcess, log_dir: Path) -> None:
        """Judge the running point until Locust exits or a limit is passed (then interrupt Locust)."""
        from loadtests.llm_protocol import read_records

        with Scraper(f"{self.base_url}/metrics", self.interval_s) as scraper:
            while True:
                try:
                    locust.popen.wait(timeout=self.interval_s)
                    return
                except subprocess.TimeoutExpired:  # still running: judge what it has recorded so far
                    pass
                records = [r for r in read_records(sorted(log_dir.glob("*.jsonl"))) if not r.warmup]
                waiting = [(sample.t, sample.values["num_requests_waiting"]) for sample in list(scraper.samples)
                           if "num_requests_waiting" in sample.values]
                reason = over_saturation([(r.start, r.ok, r.ttft_s) for r in records], waiting, self.limits)
                if reason:
                    self.stop_reason = reason
                    os.kill(locust.pid, signal.SIGINT)
                    return


class EarlyStopSettings(BaseModel):
    """`capacity.earlyStop`: when a point stops before its window ends (loadtests/saturation.py has the rules)."""

    model_config = CheckConfig.model_config

    enabled: bool = True
    error_rate: float = Field(default=EarlyStop.error_rate, gt=0, le=1)
    """Stop when more than this share of the point's requests so far failed."""
    latency_growth: float = Field(default=EarlyStop.latency_growth, gt=1)
    """Stop when the latest third's median TTFT reaches this multiple of the first third's."""
    queue_growth_per_s: float = Field(default=EarlyStop.queue_growth_per_s, gt=0)
    """Stop when the server's waiting queue grows at least this fast (requests/s) over `queueWindowS` ..."""
    queue_min: float = Field(default=EarlyStop.queue_min, ge=0)
    """... and at least this many requests wait."""
    queue_window_s: float = Field(default=EarlyStop.queue_window_s, gt=0)
    min_requests: int = Field(default=EarlyStop.min_requests, ge=1)
    """Requests a point must have before its error rate and latency growth are judged."""

    def limits(self) -> EarlyStop:
        return EarlyStop(self.error_rate, self.latency_growth, self.queue_growth_per_s, self.queue_min,
                         self.queue_window_s, self.min_requests)
