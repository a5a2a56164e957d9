"""Open-loop arrivals (loadtests/arrivals.py): vLLM's gamma gaps, and one stream per process shared by its users."""

from __future__ import annotations

import random
import statistics

import pytest

from loadtests import pacing
from loadtests.arrivals import MAX_LAG_S, ArrivalSchedule, gap_s


def test_gaps_have_the_rate_and_the_burstiness_of_vllms_gamma_arrivals():
    rng = random.Random(7)
    for burstiness in (0.25, 1.0, 4.0):
        gaps = [gap_s(rng, "poisson", 20.0, burstiness) for _ in range(20000)]
        assert statistics.fmean(gaps) == pytest.approx(1 / 20, rel=0.05)
        assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(burstiness ** -0.5, rel=0.08)
    assert gap_s(rng, "constant", 4.0) == 0.25
    with pytest.raises(ValueError):
        gap_s(rng, "poisson", 0.0)


def test_the_schedule_is_one_stream_at_its_rate_from_the_first_arrival():
    schedule = ArrivalSchedule("constant", 10.0)
    delays = [schedule.next_delay_s(now=0.0) for _ in range(3)]
    assert delays == pytest.approx([0.1, 0.2, 0.3])  # each arrival is taken once, by whichever user asks
    assert schedule.next_delay_s(now=0.35) == pytest.approx(0.05)
    # A generator that stalled skips what it missed beyond MAX_LAG_S instead of bursting it all out.
    assert schedule.next_delay_s(now=100.0) == 0.0
    late = [schedule.next_delay_s(now=100.0) for _ in range(int(MAX_LAG_S * 10) + 2)]
    assert late[-1] > 0 and sum(delay == 0.0 for delay in late) <= MAX_LAG_S * 10
    with pytest.raises(ValueError, match="rate must be > 0"):
        ArrivalSchedule("poisson", 0.0)


def test_the_report_names_gamma_arrivals_with_their_burstiness():
    assert pacing.describe_arrivals("poisson", 0.1, "exponential", 0.5, 8, burstiness=0.5) == \
        "open loop, gamma arrivals (burstiness 0.5) at 8 req/s in total"
    assert pacing.describe_arrivals("poisson", 0.1, "exponential", 0.5, 8) == \
        "open loop, poisson arrivals at 8 req/s in total"
