"""The warm-up before measuring: how many requests to send and when it is over. Kept free of Locust so it is
unit-tested plainly; the Locust user (loadtests/locustfile.py) drives it.

Cold paths (first batch shapes, lazy allocations, a replica's first connections) poison percentiles, so the users
first send warm-up requests -- the measured requests' shape, streamed -- until every replica has answered
`per_replica` of them, by the replica header each answer carries. A server without that header counts as one
replica. The warm-up gives up covering replicas after `CAP_FACTOR` x per_replica x replicas requests (a replica
that never answers is the measurement's business, not the warm-up's). It is over when no more are to be sent and
every one sent has been answered; then Locust's statistics are reset and the measurement window starts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

CAP_FACTOR = 4
"""At most this many times per_replica x replicas warm-up requests are sent."""


@dataclass
class WarmupPlan:
    per_replica: int
    replicas: int = 1
    sent: int = 0
    finished: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    """Successful warm-up answers per replica ("" for a server that names none)."""

    @property
    def cap(self) -> int:
        return CAP_FACTOR * self.per_replica * max(1, self.replicas)

    def covered(self) -> bool:
        """Every replica answered per_replica warm-up requests (answers naming no replica count for all of them)."""
        if self.per_replica <= 0:
            return True
        if self.answers.get("", 0) >= self.per_replica * max(1, self.replicas):
            return True
        return sum(count >= self.per_replica for name, count in self.answers.items() if name) >= max(1, self.replicas)

    def take(self) -> bool:
        """True: send one more warm-up request (counted as sent); False: send none now."""
        if self.covered() or self.sent >= self.cap:
            return False
        self.sent += 1
        return True

    def finish(self, ok: bool, replica: str) -> None:
        self.finished += 1
        if ok:
            self.answers[replica] += 1

    @property
    def done(self) -> bool:
        return self.finished >= self.sent and (self.covered() or self.sent >= self.cap)
