"""How closed-loop users pace their requests, and what a run's request starts and stop looked like.

Closed-loop users that all send, wait for equally long answers and send again fire in lockstep: their requests
convoy, and the server prefills batches of all users at once, which real traffic rarely produces. Users therefore
start at jittered offsets and wait a think time between requests (exponential by default, so the gaps are
memoryless like independent clients; 0 keeps the lockstep loop). Kept free of Locust so it is unit-tested plainly
and the check reads the same defaults.

Stop semantics: when the measurement window ends, a request already sent completes within a grace period (Locust's
`--stop-timeout`) and is counted, as AIPerf does; no request starts after the window. Requests still unanswered
when the grace period is over are abandoned, and their number is written to the window file, so none is dropped
silently.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

ThinkDistribution = Literal["exponential", "constant"]

THINK_TIME_S = 0.1
"""Mean wait between a user's answer and its next request (closed loop)."""
THINK_DISTRIBUTION: ThinkDistribution = "exponential"
START_JITTER_S = 0.5
"""Each closed-loop user waits uniform(0, this) before its first request."""
STOP_GRACE_S = 10.0
"""How long requests in flight at the end of the window may take to complete and still be counted."""
LOCKSTEP_GAP_S = 0.001
"""Two request starts closer than this count as fired together (the convoy the pacing prevents)."""
WINDOW_FILE_TEMPLATE = "window-{pid}.json"
"""The window file's name beside the request logs; `{pid}` is replaced by the Locust process id."""


def think_time_s(rng: random.Random, mean_s: float, distribution: ThinkDistribution) -> float:
    """One wait between requests; 0 when mean_s is 0 (lockstep, the loop without pacing)."""
    if mean_s <= 0:
        return 0.0
    return rng.expovariate(1.0 / mean_s) if distribution == "exponential" else mean_s


def start_offset_s(rng: random.Random, jitter_s: float) -> float:
    return rng.uniform(0.0, jitter_s) if jitter_s > 0 else 0.0


def describe_arrivals(arrival: str, think_mean_s: float, distribution: str, jitter_s: float, rate: float,
                      burstiness: float = 1.0) -> str:
    """The arrival model in words, for the report."""
    if arrival != "closed":
        if burstiness != 1.0 and arrival == "poisson":
            return f"open loop, gamma arrivals (burstiness {burstiness:g}) at {rate:g} req/s in total"
        return f"open loop, {arrival} arrivals at {rate:g} req/s in total"
    if think_mean_s <= 0:
        pacing = "no think time (lockstep)"
    else:
        pacing = f"{distribution} think time, mean {think_mean_s * 1000:g} ms"
    return f"closed loop, {pacing}, start offsets uniform in [0, {jitter_s:g}] s"


@dataclass(frozen=True)
class StartSpread:
    """How far apart consecutive request starts were, over all users."""

    median_gap_ms: float
    lockstep_fraction: float
    """Share of consecutive starts under LOCKSTEP_GAP_S apart."""


def start_spread(starts: Sequence[float]) -> StartSpread | None:
    """None with fewer than two starts."""
    ordered = sorted(starts)
    gaps = [b - a for a, b in zip(ordered, ordered[1:])]
    if not gaps:
        return None
    return StartSpread(median_gap_ms=statistics.median(gaps) * 1000,
                       lockstep_fraction=sum(gap < LOCKSTEP_GAP_S for gap in gaps) / len(gaps))


@dataclass(frozen=True)
class MeasurementWindow:
    """One Locust process's window: requests sent in [start, stop] are measured; those answered after `stop`
    (within the grace period) are counted; `abandoned` were still unanswered when the grace period ended.
    Every request sent is either in the request log or abandoned: sent = logged - dropped + abandoned, where
    dropped are open-loop arrivals refused at the client's in-flight limit (logged, never sent)."""

    start: float
    stop: float
    grace_s: float
    sent: int
    abandoned: int
    cpu_cores: float | None = None
    """CPU time this Locust process used during the window / the window's length (1.0: a whole core)."""
    loop_lag_ms_p99: float | None = None
    """p99 lateness of a periodic timer on this process's event loop during the window (loadtests/saturation.py):
    how late greenlets ran, so how late requests were sent and their chunks timed. None: not measured."""

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> "MeasurementWindow":
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class StopAccounting:
    """What happened to requests in flight when the window ended, over all Locust processes."""

    stop: float
    """The earliest stop of any process (they stop together within milliseconds)."""
    completed_in_grace: int
    """Requests sent before the stop and answered after it: counted."""
    abandoned: int
    """Requests still unanswered at the end of the grace period: not in the log, reported here."""
    sent_after_stop: int
    """Requests sent after the stop (0 unless pacing is broken)."""


def stop_accounting(windows: Sequence[MeasurementWindow], starts_and_ends: Sequence[tuple[float, float]]
                    ) -> StopAccounting | None:
    if not windows:
        return None
    stop = min(window.stop for window in windows)
    last_stop = max(window.stop for window in windows)
    return StopAccounting(stop=stop,
                          completed_in_grace=sum(start <= last_stop < end for start, end in starts_and_ends),
                          abandoned=sum(window.abandoned for window in windows),
                          sent_after_stop=sum(start > last_stop for start, _ in starts_and_ends))
