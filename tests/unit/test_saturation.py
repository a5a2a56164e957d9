"""Early stop of an over-saturated load point and the client-saturation verdict (loadtests/saturation.py)."""

from __future__ import annotations

from loadtests.pacing import MeasurementWindow
from loadtests.saturation import EarlyStop, client_saturation, client_saturation_of, over_saturation

LIMITS = EarlyStop()


def steady(count: int, ttft: float = 0.05) -> list[tuple[float, bool, float | None]]:
    return [(i * 0.1, True, ttft) for i in range(count)]


def test_a_steady_point_runs_on():
    assert over_saturation(steady(30), [(t / 2, 1.0) for t in range(10)], LIMITS) is None
    assert over_saturation(steady(5, ttft=9.0), [], LIMITS) is None  # too few requests to judge


def test_errors_over_the_limit_stop_the_point():
    answered = steady(6) + [(1.0 + i, False, None) for i in range(7)]
    assert over_saturation(answered, [], LIMITS) == "error rate 54% > 50% after 13 requests"


def test_latency_growing_without_bound_stops_the_point():
    answered = [(i * 0.1, True, 0.05 * (1 + i)) for i in range(30)]  # TTFT grows with every request
    reason = over_saturation(answered, [], LIMITS)
    assert reason.startswith("latency growing without bound: median TTFT of the latest 10 requests")
    flat_then_high = [(i * 0.1, True, 0.05 if i < 20 else 0.15) for i in range(30)]  # 3x: under the limit
    assert over_saturation(flat_then_high, [], LIMITS) is None


def test_a_growing_server_queue_stops_the_point_a_standing_one_does_not():
    growing = [(t * 0.5, 4.0 * t) for t in range(8)]  # +8 requests/s
    assert over_saturation([], growing, LIMITS).startswith("waiting queue growing: +8.0 requests/s")
    standing = [(t * 0.5, 20.0 + (t % 2)) for t in range(8)]
    assert over_saturation([], standing, LIMITS) is None
    small = [(t * 0.5, 0.5 * t) for t in range(8)]  # grows, but never 8 waiting
    assert over_saturation([], small, LIMITS) is None


def test_client_saturation_by_cpu_lag_or_falling_behind_the_schedule():
    assert client_saturation(0.3, 10.0, 95, 100.0) == []
    assert client_saturation(0.95, None, None, None) == ["a Locust process used 0.95 of a core (limit 0.9)"]
    assert client_saturation(None, 80.0, None, None) == ["event-loop lag p99 80 ms (limit 50 ms)"]
    # 100 scheduled: 3 sigma is 30 requests
    assert client_saturation(None, None, 71, 100.0) == []
    assert client_saturation(None, None, 69, 100.0) == [
        "sent 69 requests of 100 scheduled (below the Poisson 3-sigma band)"]


def test_the_verdict_of_a_runs_window_files():
    windows = [MeasurementWindow(0.0, 10.0, 1.0, sent=40, abandoned=0, cpu_cores=0.2, loop_lag_ms_p99=5.0),
               MeasurementWindow(0.1, 10.0, 1.0, sent=25, abandoned=0, cpu_cores=0.97, loop_lag_ms_p99=7.0)]
    assert client_saturation_of(windows, None) == ["a Locust process used 0.97 of a core (limit 0.9)"]
    assert client_saturation_of(windows, 10.0) == [
        "a Locust process used 0.97 of a core (limit 0.9)",
        "sent 65 requests of 100 scheduled (below the Poisson 3-sigma band)"]
    old = MeasurementWindow(0.0, 10.0, 1.0, sent=40, abandoned=0)  # written before these were measured
    assert client_saturation_of([old], None) == []
