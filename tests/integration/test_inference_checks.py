"""The inference and inference_failover checks end to end: real replicas, real Locust, real SIGKILL."""

from __future__ import annotations

import os
import time

import pytest

from dcforge.checks import load_check
from dcforge.harness.check import CheckContext
from dcforge.harness.result import Status
from dcforge.spec.loader import load_environment
from tests.integration.energy_support import assert_energy

pytestmark = pytest.mark.slow


def context(tmp_path) -> CheckContext:
    return CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 300,
                        log=lambda line: None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_inference_check_measures_a_loaded_server(tmp_path):
    check = load_check("inference")
    config = check.Config.model_validate({"replicas": 2, "users": 4, "durationS": 6, "maxTokens": 16,
                                          "goodputTtftMs": 60000, "tls": True})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.PASS, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert metrics["requests"] > 4 and metrics["error_rate"] == 0
    assert metrics["ttft_ms.p50"] <= metrics["ttft_ms.p95"] <= metrics["ttft_ms.p99"] <= metrics["e2e_ms.p99"]
    assert metrics["output_tokens_per_s"] == pytest.approx(metrics["rps"] * 16, rel=0.01)  # ignore_eos: 16 each
    assert metrics["goodput_fraction"] == 1.0 and metrics["endpoint_compliance_failures"] == 0
    assert {f["rule"] for f in result.details["endpoint_compliance"]} == {"api-key-required", "tls-minimum-version"}
    assert len([plot for plot in result.plots if plot.title != "Power draw"]) == 4
    assert_energy(result, "output_tokens_per_joule")
    request_log = (tmp_path / result.artefacts["request_log"]).read_text()
    assert request_log.count("\n") == metrics["requests"]
    server_log = (tmp_path / result.artefacts["server_log"]).read_text()
    assert "Bearer" not in server_log and "Bearer" not in (tmp_path / result.artefacts["locust_log"]).read_text()


def test_failover_check_kills_a_replica_and_sees_it_respawn(tmp_path):
    check = load_check("inference_failover")
    config = check.Config.model_validate({"replicas": 2, "users": 4, "durationS": 12, "killAtS": 4,
                                          "maxTokens": 16, "consecutiveWindows": 2})
    result = check.run(context(tmp_path), config)
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    details = result.details
    assert details["victim_pid"] != details["respawned_pid"]
    assert metrics["respawned_replica_requests"] >= 1
    assert metrics["replica_respawn_s"] > 0
    # Only requests that were on the killed replica may fail (docs/metrics.md#inference_failover), and they are all listed as lost.
    assert metrics["excess_failures"] <= 0
    assert metrics["requests_lost"] == len(details["lost_requests"])
    assert any(plot.markers and "SIGKILL" in plot.markers[0]["label"] for plot in result.plots)
    assert result.status == Status.PASS, result.reason
    # Every server process is gone once the check returns.
    assert not alive(details["respawned_pid"]) and not alive(details["victim_pid"])
