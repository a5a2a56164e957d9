"""Load from many workers (docs/serving.md#many-workers): real Locust master/worker processes through the check's
load path against the fake OpenAI server, which lists every request id it received."""

from __future__ import annotations

import pytest

from benchmarks import cpu_starvation
from benchmarks.capacity_search import fake_capacity_server
from benchmarks.load_workers import FAKE_CAPACITY_RPS, STARVE_THINK_S, run_workers

pytestmark = pytest.mark.slow
SECONDS = 8.0
"""Long enough for 4 forked workers to start and warm up on a busy 2-core machine (the window includes both)."""


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    with fake_capacity_server(tmp_path_factory.mktemp("fake"), FAKE_CAPACITY_RPS) as base_url:
        yield base_url


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_the_merged_log_holds_exactly_the_requests_the_server_received(fake_server, tmp_path, workers):
    run = run_workers(fake_server, tmp_path, workers, SECONDS)
    assert run.measured > 0 and run.request_throughput > 0
    assert run.worker_logs == (1 if workers == 1 else workers + 1)  # the master's own log stays empty
    assert (run.logged, run.missing, run.unexpected, run.server_duplicates) == (run.server_counted, 0, 0, 0)


def test_a_cpu_starved_worker_makes_the_client_saturation_verdict_fire_and_only_then(fake_server, tmp_path):
    reason = cpu_starvation.unavailable()
    if reason is not None:
        pytest.skip(reason)
    calm = run_workers(fake_server, tmp_path / "calm", 2, SECONDS, think_time_s=STARVE_THINK_S)
    assert calm.client_saturation == "not saturated"
    with cpu_starvation.starve_first_worker() as starver:
        starved = run_workers(fake_server, tmp_path / "starved", 2, SECONDS, during=starver,
                              think_time_s=STARVE_THINK_S)
    assert starver.pid is not None and not starver.group.exists()
    assert any("event-loop lag" in reason for reason in starved.client_saturation), starved.client_saturation
    assert starved.exact  # a starved worker is slow, not lossy
