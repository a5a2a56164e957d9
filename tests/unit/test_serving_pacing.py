"""Closed-loop pacing, the spread of request starts, stop accounting and replica shares: the pure parts of
multi-replica load measurement."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dcforge.steps.serving.replicas import IdleVictim, busiest_replica, replica_shares
from loadtests import pacing
from workloads.records import RequestRecord


def answered(replica: str, start: float = 0.0) -> RequestRecord:
    return RequestRecord(start=start, end=start + 1, ok=bool(replica), replica=replica)


def test_zero_think_time_is_the_lockstep_loop_and_the_default_is_exponential():
    rng = random.Random(1)
    assert pacing.think_time_s(rng, 0, "exponential") == 0.0
    assert pacing.think_time_s(rng, 0.2, "constant") == 0.2
    draws = [pacing.think_time_s(rng, 0.1, pacing.THINK_DISTRIBUTION) for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(0.1, rel=0.05)
    assert len(set(draws)) == len(draws) and min(draws) >= 0


def test_start_offsets_stay_within_the_jitter():
    rng = random.Random(2)
    offsets = [pacing.start_offset_s(rng, 0.5) for _ in range(1000)]
    assert 0 <= min(offsets) and max(offsets) <= 0.5 and max(offsets) - min(offsets) > 0.4
    assert pacing.start_offset_s(rng, 0) == 0


def test_start_spread_measures_convoys():
    convoy = [t + user * 0.0001 for t in (0.0, 0.3, 0.6) for user in range(8)]  # 8 users firing together
    spread = pacing.start_spread(convoy)
    assert spread.median_gap_ms == pytest.approx(0.1)
    assert spread.lockstep_fraction == pytest.approx(21 / 23)
    even = pacing.start_spread([i * 0.012 for i in range(50)])
    assert even.median_gap_ms == pytest.approx(12) and even.lockstep_fraction == 0
    assert pacing.start_spread([1.0]) is None


def test_describe_arrivals_names_the_model():
    assert pacing.describe_arrivals("closed", 0.1, "exponential", 0.5, 10) == \
        "closed loop, exponential think time, mean 100 ms, start offsets uniform in [0, 0.5] s"
    assert "lockstep" in pacing.describe_arrivals("closed", 0, "exponential", 0, 10)
    assert pacing.describe_arrivals("poisson", 0.1, "exponential", 0.5, 4) == \
        "open loop, poisson arrivals at 4 req/s in total"


def test_stop_accounting_counts_requests_answered_in_the_grace_period(tmp_path):
    windows = [pacing.MeasurementWindow(start=0, stop=10.0, grace_s=5, sent=40, abandoned=2),
               pacing.MeasurementWindow(start=0, stop=10.02, grace_s=5, sent=30, abandoned=1)]
    windows[0].write(tmp_path / "w.json")
    assert pacing.MeasurementWindow.read(tmp_path / "w.json") == windows[0]
    # (10.01, 10.03) was sent by the process that stopped at 10.02: inside its window, answered in the grace period
    requests = [(1, 2), (9.5, 10.5), (9.9, 12), (10.01, 10.03), (8, 9.99), (10.05, 10.06)]
    accounting = pacing.stop_accounting(windows, requests)
    assert accounting == pacing.StopAccounting(stop=10.0, completed_in_grace=3, abandoned=3, sent_after_stop=1)
    assert pacing.stop_accounting([], requests) is None


def test_replica_shares_count_an_idle_replica_as_zero():
    records = [answered("11")] * 6 + [answered("12")] * 4 + [answered("")]
    shares = replica_shares(records, replicas=2)
    assert (shares.min_share, shares.max_share, shares.min_to_fair) == (0.4, 0.6, 0.8)
    stuck = replica_shares([answered("11")] * 10, replicas=2)
    assert (stuck.min_share, stuck.max_share, stuck.min_to_fair) == (0.0, 1.0, 0.0)
    assert replica_shares([], replicas=3).min_to_fair == 0.0


def test_the_failover_victim_is_the_busiest_ready_replica_and_never_an_idle_one():
    counts = Counter({"11": 3, "12": 9, "99": 50})  # 99 already gone: not ready, not a candidate
    assert busiest_replica(counts, [11, 12, 13]) == (12, 9)
    with pytest.raises(IdleVictim, match="no ready replica"):
        busiest_replica(Counter({"99": 5}), [11, 12])
    with pytest.raises(IdleVictim):
        busiest_replica(Counter(), [11])


def test_the_victim_picker_reads_the_request_log_and_gives_up_on_idle_replicas(tmp_path):
    import time

    from dcforge.steps.serving.replicas import wait_for_busiest_replica

    log = tmp_path / "requests-1.jsonl"
    log.write_text("".join(answered(replica, start=i).to_json() + "\n"
                           for i, replica in enumerate(["11", "12", "12", ""])))
    assert wait_for_busiest_replica(tmp_path, lambda: [11, 12], deadline=0) == 12
    started = time.monotonic()
    with pytest.raises(IdleVictim):
        wait_for_busiest_replica(tmp_path, lambda: [13], deadline=time.time() + 0.3, poll_s=0.05)
    assert 0.3 <= time.monotonic() - started < 2
