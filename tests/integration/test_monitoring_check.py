"""The monitoring check against real endpoints: the bundled server under a bounded load, a live Prometheus
exporter (prometheus_client's own HTTP server) and a stopped target."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from dcforge.checks import load_check
from dcforge.steps.serving.server import free_port
from dcforge.checks.monitoring import MonitoringConfig, family_totals
from dcforge.harness.check import CheckContext
from dcforge.harness.result import Status
from dcforge.spec.loader import load_environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def context(tmp_path) -> CheckContext:
    return CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 150,
                        log=lambda line: None)


@pytest.fixture
def exporter():
    """A live exporter on a free loopback port with a counter that nothing increments."""
    registry = CollectorRegistry()
    Counter("jobs_done", "jobs finished", registry=registry).inc(3)
    Gauge("temperature_celsius", "temperature", registry=registry).set(41)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_family_totals_sum_counters_histograms_and_gauges():
    text = ("# TYPE reqs_total counter\nreqs_total{route=\"/a\"} 3\nreqs_total{route=\"/b\"} 4\n"
            "# TYPE lat histogram\nlat_bucket{le=\"1\"} 2\nlat_bucket{le=\"+Inf\"} 5\nlat_count 5\nlat_sum 2.5\n"
            "# TYPE depth gauge\ndepth 2\n")
    assert family_totals(text) == {"reqs": 7.0, "lat": 5.0, "depth": 2.0}


def test_bundled_server_counters_move_and_broken_targets_are_named(tmp_path, exporter):
    stopped = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    config = MonitoringConfig.model_validate({
        "requests": 5, "maxTokens": 4,
        "targets": [{"name": "static-exporter", "url": exporter, "families": ["jobs_done", "temperature_celsius"],
                     "moving": ["jobs_done"]},
                    {"name": "stopped-node", "url": stopped, "kind": "node-exporter"}]})
    result = load_check("monitoring").run(context(tmp_path), config)
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert result.status == Status.FAIL
    assert metrics["requests_sent"] == 5 and metrics["request_counter_delta"] == 5
    assert metrics["request_counter_matches"] == 1
    assert metrics["targets"] == 3 and metrics["targets_down"] == 1
    assert metrics["families_missing"] == 0 and metrics["families_static"] == 1
    assert f"target stopped-node ({stopped}) cannot be scraped: ConnectError" in result.reason
    assert f"target static-exporter ({exporter}): jobs_done did not increase" in result.reason
    bundled = next(row for row in result.details["targets"] if row["target"] == "bundled-server")
    assert bundled["error"] == "" and bundled["missing"] == [] and bundled["static"] == []
    after = (tmp_path / result.artefacts["metrics_after"]).read_text()
    assert 'dcforge_requests_total{route="/v1/completions",status="200"}' in after


def test_declared_exporter_without_bundled_server(tmp_path, exporter):
    check = load_check("monitoring")
    config = MonitoringConfig.model_validate({"bundledServer": False, "targets": [
        {"name": "exporter", "url": exporter, "families": ["jobs_done", "temperature_celsius"]}]})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.PASS, result.reason
    assert result.metrics["targets_down"].value == 0 and result.metrics["families_missing"].value == 0

    config = MonitoringConfig.model_validate({"bundledServer": False, "targets": [
        {"name": "exporter", "url": exporter, "families": ["jobs_done", "gpu_util"]}]})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.FAIL and result.reason == f"target exporter ({exporter}) lacks gpu_util"


def test_nothing_to_scrape_is_refused():
    with pytest.raises(ValueError, match="nothing to scrape"):
        MonitoringConfig.model_validate({"bundledServer": False})
