"""Is a load point over-saturated (stop it early), and was the load generator itself saturated (the point is then
invalid: it measured the client, not the server)? Pure rules over what a point has recorded so far; the check's
watcher (dcforge/steps/serving/point_watch.py) feeds them while the point runs (docs/serving.md#early-stop).

Over-saturation, each judged once a point has `min_requests` answered requests (or server samples):
- error rate: failed / requests so far > `error_rate`;
- latency growing without bound: median TTFT of the latest third of answered requests (by send time) >=
  `latency_growth` x the median of the first third, once each third has LATENCY_MIN_THIRD requests (a median of
  fewer is noise: a short point's first requests meet an idle server);
- waiting queue growing: the least-squares slope of vllm:num_requests_waiting over the last `queue_window_s` is
  >= `queue_growth_per_s` requests/s and the last sample has >= `queue_min` requests waiting.

Client saturation:
- CPU: a load-generator process used >= CLIENT_CPU_LIMIT of a core over the point;
- event-loop lag: the p99 lateness of a 50-ms gevent timer in a Locust process >= LOOP_LAG_LIMIT_MS (greenlets
  could not be scheduled on time, so send and receive times are late);
- achieved rate (open loop): requests sent < scheduled - 3 sqrt(scheduled), i.e. below a Poisson stream's 3-sigma
  band around rate x window (the generator fell behind its schedule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

try:
    from loadtests.pacing import MeasurementWindow
except ImportError:  # imported by the locustfile from inside loadtests/
    from pacing import MeasurementWindow  # type: ignore[no-redef]

CLIENT_CPU_LIMIT = 0.9
"""Share of one core a load-generator process may use before it counts as saturated (Locust runs one core each)."""
LOOP_LAG_LIMIT_MS = 50.0
"""p99 lateness of the event loop's timer beyond which requests are no longer sent and timed when they should be."""
LATENCY_MIN_THIRD = 10
"""Answered requests each third needs before latency growth is judged."""
LOOP_LAG_PERIOD_S = 0.05
"""Period of the timer whose lateness measures the event-loop lag (loadtests/locustfile.py)."""


@dataclass(frozen=True)
class EarlyStop:
    """Limits that end a load point before its window is over (capacity.earlyStop)."""

    error_rate: float = 0.5
    latency_growth: float = 4.0
    queue_growth_per_s: float = 2.0
    queue_min: float = 8.0
    queue_window_s: float = 2.0
    min_requests: int = 10


def over_saturation(answered: Sequence[tuple[float, bool, float | None]], waiting: Sequence[tuple[float, float]],
                    limits: EarlyStop) -> str | None:
    """Why the point should stop now, or None. `answered`: (send time, ok, TTFT s or None) of every request
    logged so far; `waiting`: (time, requests waiting in the server) samples."""
    if len(answered) >= limits.min_requests:
        failed = sum(not ok for _, ok, _ in answered)
        if failed / len(answered) > limits.error_rate:
            return f"error rate {failed / len(answered):.0%} > {limits.error_rate:.0%} after {len(answered)} requests"
        ttfts = [ttft for _, ok, ttft in sorted(answered) if ok and ttft is not None]
        third = len(ttfts) // 3
        if third >= LATENCY_MIN_THIRD:
            first, latest = float(np.median(ttfts[:third])), float(np.median(ttfts[-third:]))
            if first > 0 and latest >= limits.latency_growth * first:
                return (f"latency growing without bound: median TTFT of the latest {third} requests {latest * 1000:.0f}"
                        f" ms >= {limits.latency_growth:g} x the first {third}'s {first * 1000:.0f} ms")
    if waiting:
        recent = [(t, value) for t, value in waiting if t >= waiting[-1][0] - limits.queue_window_s]
        if len(recent) >= 4 and recent[-1][1] >= limits.queue_min:
            times, values = np.array([t for t, _ in recent]), np.array([v for _, v in recent])
            slope = float(np.polyfit(times - times[0], values, 1)[0]) if np.ptp(times) > 0 else 0.0
            if slope >= limits.queue_growth_per_s:
                return (f"waiting queue growing: +{slope:.1f} requests/s over the last {limits.queue_window_s:g} s, "
                        f"{recent[-1][1]:g} waiting")
    return None


def client_saturation_of(windows: Sequence[MeasurementWindow], rate: float | None) -> list[str]:
    """`client_saturation` of a run's window files: the busiest process's CPU, the worst process's lag, and (with
    an open-loop `rate`) the requests all processes sent against rate x the window."""
    cpus = [window.cpu_cores for window in windows if window.cpu_cores is not None]
    lags = [window.loop_lag_ms_p99 for window in windows if window.loop_lag_ms_p99 is not None]
    scheduled = None
    if rate and windows:
        scheduled = rate * (max(w.stop for w in windows) - min(w.start for w in windows))
    return client_saturation(max(cpus, default=None), max(lags, default=None),
                             sum(window.sent for window in windows) if scheduled is not None else None, scheduled)


def client_saturation(cpu_cores: float | None, loop_lag_p99_ms: float | None, sent: int | None,
                      scheduled: float | None) -> list[str]:
    """What saturated the load generator (empty: nothing did). `cpu_cores`: the busiest Locust process's CPU over
    the window, in cores; `loop_lag_p99_ms`: the worst process's timer lateness; `sent`/`scheduled`: requests sent
    and rate x window (open loop only)."""
    reasons = []
    if cpu_cores is not None and cpu_cores >= CLIENT_CPU_LIMIT:
        reasons.append(f"a Locust process used {cpu_cores:.2f} of a core (limit {CLIENT_CPU_LIMIT:g})")
    if loop_lag_p99_ms is not None and loop_lag_p99_ms >= LOOP_LAG_LIMIT_MS:
        reasons.append(f"event-loop lag p99 {loop_lag_p99_ms:.0f} ms (limit {LOOP_LAG_LIMIT_MS:g} ms)")
    if sent is not None and scheduled is not None and scheduled > 0 \
            and sent < scheduled - 3 * math.sqrt(scheduled):
        reasons.append(f"sent {sent} requests of {scheduled:.0f} scheduled (below the Poisson 3-sigma band)")
    return reasons
