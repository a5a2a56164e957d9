"""Open-loop arrivals: when the next request is sent, at a target rate, as vLLM's `bench serve` paces them.

Gaps between arrivals are drawn from a gamma distribution with shape `burstiness` and mean 1/rate (vLLM's
`--burstiness`): burstiness 1 is the exponential gap of a Poisson process, below 1 the arrivals come in bursts
(coefficient of variation 1/sqrt(burstiness)), above 1 they are more regular; `constant` arrivals are exactly
1/rate apart. Kept free of Locust and gevent so it is unit-tested plainly and the check reads the same defaults.

One `ArrivalSchedule` per load-generator process is shared by all its users: before each request a user takes the
next arrival time from it. The process's requests are then one stream at the process's rate with the gap
distribution above, whatever the number of users and from the first user on (separate per-user streams would each
be bursty, but their superposition tends to Poisson as users are added, hiding the burstiness; and a stream whose
rate grew as users joined would draw its first gaps at a fraction of the rate, losing arrivals at the start). With
several Locust processes (`--processes N`) each runs rate/N and the total is their superposition.
"""

from __future__ import annotations

import random
from typing import Literal

OpenLoopArrival = Literal["constant", "poisson"]

BURSTINESS = 1.0
"""Default gamma shape of the gaps between Poisson-mode arrivals: 1 is a Poisson process (vLLM's default)."""
MAX_LAG_S = 1.0
"""A schedule that fell further behind than this (the generator was starved of CPU) skips ahead instead of sending
the missed arrivals in one burst: the rate stays exact as long as the generator keeps up, and a stall is not turned
into a spike that the server never saw from real clients."""


def gap_s(rng: random.Random, arrival: OpenLoopArrival, rate: float, burstiness: float = BURSTINESS) -> float:
    """One gap between consecutive arrivals of a stream at `rate` per second (mean 1/rate)."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0, got {rate}")
    if arrival == "constant":
        return 1.0 / rate
    if burstiness <= 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if burstiness == 1.0:
        return rng.expovariate(rate)
    return rng.gammavariate(burstiness, 1.0 / (rate * burstiness))  # shape k, scale theta: mean k*theta = 1/rate


class ArrivalSchedule:
    """The arrival times of one process's stream at `rate` per second; the first comes one gap after the first ask."""

    def __init__(self, arrival: OpenLoopArrival, rate: float, burstiness: float = BURSTINESS,
                 rng: random.Random | None = None):
        if rate <= 0:
            raise ValueError(f"arrival rate must be > 0, got {rate}")
        self.arrival = arrival
        self.rate = rate
        self.burstiness = burstiness
        self.rng = rng or random.Random()
        self._next_at: float | None = None

    def next_delay_s(self, now: float) -> float:
        """Seconds from `now` until the next arrival, which is then taken: each arrival goes to one caller."""
        previous = now if self._next_at is None else max(self._next_at, now - MAX_LAG_S)
        self._next_at = previous + gap_s(self.rng, self.arrival, self.rate, self.burstiness)
        return max(0.0, self._next_at - now)
