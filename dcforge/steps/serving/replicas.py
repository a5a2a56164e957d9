"""How requests spread over the server's replicas, from the replica header each answer carries (the per-request
log's `replica` field), and the failover victim chosen among replicas that carry traffic."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult
from workloads.records import RequestRecord

REPLICA_SHARE_METRICS = (
    MetricSpec("replica_share_min", "", "higher", "least-loaded replica's answered requests / all answered requests",
               "the share of the replica that got the least work (0: a replica was idle)"),
    MetricSpec("replica_share_max", "", "lower", "most-loaded replica's answered requests / all answered requests",
               "the share of the replica that got the most work"),
    MetricSpec("replica_share_min_to_fair", "", "higher", "replica_share_min x replicas",
               "how evenly load spread over the replicas: 1 even, 0 an idle replica; one SLO fits any replica count"),
)


def requests_per_replica(records: Iterable[RequestRecord]) -> Counter[str]:
    """Answered requests (any status) per replica pid; requests that got no answer name no replica."""
    return Counter(record.replica for record in records if record.replica)


@dataclass(frozen=True)
class ReplicaShares:
    counts: dict[str, int]
    replicas: int
    """The configured number: a replica that answered nothing has share 0 and lowers the minimum."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def min_share(self) -> float:
        if not self.total:
            return 0.0
        return 0.0 if len(self.counts) < self.replicas else min(self.counts.values()) / self.total

    @property
    def max_share(self) -> float:
        return max(self.counts.values()) / self.total if self.total else 0.0

    @property
    def min_to_fair(self) -> float:
        """The least-loaded replica's share over the fair share 1/replicas: 1 is a perfect spread, 0 an idle
        replica; comparable across replica counts, so one SLO fits any of them."""
        return self.min_share * self.replicas


def replica_shares(records: Iterable[RequestRecord], replicas: int) -> ReplicaShares:
    return ReplicaShares(dict(requests_per_replica(records)), replicas)


def add_share_metrics(result: CheckResult, shares: ReplicaShares, scope: str) -> None:
    result.add_metric("replica_share_min", shares.min_share, context=scope)
    result.add_metric("replica_share_max", shares.max_share, context=scope)
    result.add_metric("replica_share_min_to_fair", shares.min_to_fair, context=scope)
    result.details["requests_per_replica"] = {scope: shares.counts}


class IdleVictim(RuntimeError):
    """Killing this replica would test nothing: it carried no traffic."""


def busiest_replica(counts: Counter[str] | dict[str, int], candidates: Iterable[int]) -> tuple[int, int]:
    """The candidate pid that answered the most requests, and that count; IdleVictim when none answered any."""
    ranked = sorted(((counts.get(str(pid), 0), pid) for pid in candidates), reverse=True)
    if not ranked or ranked[0][0] == 0:
        raise IdleVictim(f"no ready replica among {sorted(candidates)} has answered a request yet "
                         f"(answers per replica: {dict(counts) or 'none'})")
    count, pid = ranked[0]
    return pid, count


def wait_for_busiest_replica(request_log_dir: Path, ready_pids: Callable[[], list[int]], deadline: float,
                             poll_s: float = 0.2) -> int:
    """The failover victim: the ready replica that answered the most requests so far, by the request log (flushed
    at least every second), so the kill always bites. While none has answered yet (Locust still starting on a busy
    machine) it waits; IdleVictim once `deadline` (epoch seconds) passes with every replica still idle."""
    from loadtests.llm_protocol import read_records

    while True:
        so_far = requests_per_replica(read_records(sorted(request_log_dir.glob("*.jsonl"))))
        try:
            return busiest_replica(so_far, ready_pids())[0]
        except IdleVictim:
            if time.time() >= deadline:
                raise
            time.sleep(poll_s)
