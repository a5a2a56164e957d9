"""The inference and inference_failover checks end to end: real replicas, real Locust, real SIGKILL."""

from __future__ import annotations

import json
import os
import time

import pytest

from dcforge.checks import load_check
from dcforge.checks.inference import InferenceConfig
from dcforge.steps.serving.load import REQUEST_LOG_DIR, run_load, serving_session
from dcforge.steps.serving.replicas import replica_shares
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckResult, Status
from dcforge.harness.slo import parse_slos
from dcforge.spec.loader import load_environment
from loadtests.llm_protocol import read_records
from loadtests.pacing import MeasurementWindow
from tests.integration.energy_support import assert_energy

pytestmark = pytest.mark.slow
PACED_LOCKSTEP_MAX = 0.2
PACED_GAP_MIN_MS = 5.0
LOCKSTEP_MIN = 0.3


def context(tmp_path) -> CheckContext:
    return CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 300,
                        log=lambda line: None)


def run_figures(ctx: CheckContext, config: InferenceConfig, session) -> dict[str, float]:
    """One Locust run against a running session: replica spread and start spread."""
    result = CheckResult("inference", declared=load_check("inference").metrics)
    records, _ = run_load(ctx, config, session, result)
    shares = replica_shares(records, config.replicas)
    return {"replica_share_min_to_fair": shares.min_to_fair, **{name: result.metrics[name].value for name in
                                                                 ("starts_in_lockstep_fraction", "start_gap_ms.p50")}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_inference_check_measures_a_loaded_server(tmp_path):
    check = load_check("inference")
    config = check.Config.model_validate({"replicas": 2, "users": 4, "durationS": 6, "maxTokens": 16,
                                          "goodput": "ttft:60000", "tls": True, "warmupPerReplica": 2})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.PASS, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert metrics["requests"] > 4 and metrics["error_rate"] == 0 and metrics["completed"] == metrics["requests"]
    assert metrics["p50_ttft_ms"] <= metrics["p95_ttft_ms"] <= metrics["p99_ttft_ms"] <= metrics["p99_e2el_ms"]
    assert metrics["output_throughput"] == pytest.approx(metrics["request_throughput"] * 16, rel=0.01)  # ignore_eos
    assert metrics["min_output_tokens"] == metrics["max_output_tokens"] == 16 and metrics["mean_input_tokens"] > 0
    assert metrics["goodput_fraction"] == 1.0 and metrics["endpoint_compliance_failures"] == 0
    assert result.metrics["p95_ttft_ms"].aliases == {"aiperf": "time_to_first_token.p95",
                                                     "dcforge (former)": "ttft_ms.p95"}
    assert {f["rule"] for f in result.details["endpoint_compliance"]} == {"api-key-required", "tls-minimum-version"}
    assert len([plot for plot in result.plots if plot.title != "Power draw"]) == 5
    # The server's own state, scraped every 0.5 s during the window (both replicas' engines, under vLLM's names):
    # 4 users always keep a request running; the engine never preempts; every family is there.
    assert result.plots[1].title.startswith("Server state") and metrics["server_scrapes"] >= 6
    assert metrics["num_requests_running.max"] >= 1 and 0 < metrics["kv_cache_usage.max"] < 1
    assert metrics["num_preemptions.total"] == 0 and result.details["server_metrics"]["not_reported"] == []
    assert_energy(result, "output_tokens_per_joule")
    # Warm-up: every replica answered 2 streamed requests before measuring; they are in the log, marked, and in
    # no statistic (requests counts only the others).
    logged = read_records([tmp_path / result.artefacts["request_log"]])
    warmup = [r for r in logged if r.warmup]
    assert metrics["warmup_requests"] == len(warmup) >= 4 and len(logged) - len(warmup) == metrics["requests"]
    assert all(r.ok and r.stream for r in warmup) and len({r.replica for r in warmup}) == 2
    assert max(r.start for r in warmup) < min(r.start for r in logged if not r.warmup)
    export = [json.loads(line) for line in (tmp_path / result.artefacts["aiperf_profile_export"]).open()]
    assert len(export) == len(logged)
    assert sum(x["metadata"]["benchmark_phase"] == "warmup" for x in export) == len(warmup)
    server_log = (tmp_path / result.artefacts["server_log"]).read_text()
    assert "Bearer" not in server_log and "Bearer" not in (tmp_path / result.artefacts["locust_log"]).read_text()


def test_multi_turn_chat_sends_the_servers_answers_back_and_its_prefix_cache_reuses_them(tmp_path):
    """One replica, so every next turn meets the slot that served the previous one: the server's counters and its
    usage.cached_tokens both see the history reused; the log holds every turn."""
    check = load_check("inference")
    config = check.Config.model_validate({"replicas": 1, "users": 2, "durationS": 5, "maxTokens": 8, "turns": 3,
                                          "thinkTimeS": 0.05, "warmupPerReplica": 1, "serverMetricsIntervalS": 0.25})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.PASS, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    records = [r for r in read_records([tmp_path / result.artefacts["request_log"]]) if not r.warmup]
    assert metrics["error_rate"] == 0 and {1, 2, 3} <= {r.turn for r in records}
    later = [r for r in records if r.turn > 1]
    # A later turn's prompt holds the earlier turns: longer than any first turn's.
    assert min(r.prompt_tokens for r in later) > max(r.prompt_tokens for r in records if r.turn == 1)
    def cached_share(turns):  # first turns may share a few words with an earlier prompt, later turns their history
        return sum(r.cached_tokens for r in turns) / sum(r.prompt_tokens for r in turns)

    assert cached_share(later) > max(0.3, cached_share([r for r in records if r.turn == 1]))
    assert 0 < metrics["prefix_cache_hit_rate"] < 1 and 0 < metrics["cached_prompt_fraction"] < 1
    assert metrics["ttft_first_turn_ms.mean"] > 0 and metrics["ttft_later_turns_ms.mean"] > 0


def test_shared_prefix_workload_from_a_prompt_file_reports_its_lengths(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "short question"}\n{"text": "a somewhat longer question", "output_tokens": 4}\n')
    check = load_check("inference")
    config = check.Config.model_validate({"replicas": 1, "users": 2, "durationS": 3, "maxTokens": 8,
                                          "promptFile": str(prompts), "sharedPrefixes": 2,
                                          "sharedPrefixTokens": 64, "warmupPerReplica": 1})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.PASS, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert (metrics["min_output_tokens"], metrics["max_output_tokens"]) == (4, 8)
    assert metrics["min_input_tokens"] > 64  # every prompt is behind a 64-token system prompt
    assert "prompts from" in result.details["workload"] and "2 shared 64-token" in result.details["workload"]


def test_repeats_measure_the_load_again_and_report_means_with_intervals(tmp_path):
    """Three short real load runs on one server: each repeat has its own request log; the reported figure is the
    mean of the per-repeat values and its interval contains it."""
    check = load_check("inference")
    config = check.Config.model_validate({"replicas": 1, "users": 2, "durationS": 2, "maxTokens": 8,
                                          "warmupPerReplica": 1, "repeats": 3})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.PASS, result.reason
    repeats = result.details["repeats"]
    per_repeat = repeats["values"]["requests"]
    assert repeats["count"] == 3 and len(per_repeat) == 3 and min(per_repeat) > 0
    assert result.metrics["requests"].value == pytest.approx(sum(per_repeat) / 3)
    for key in ("requests", "p95_ttft_ms", "request_throughput"):
        low, high = result.metrics[f"{key}.ci95_low"].value, result.metrics[f"{key}.ci95_high"].value
        assert low <= result.metrics[key].value <= high
    for index in (2, 3):
        logged = read_records([tmp_path / result.artefacts[f"request_log_repeat_{index}"]])
        assert len([r for r in logged if not r.warmup]) == per_repeat[index - 1]
    assert len(repeats["client_saturation"]) == 3


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
    # The victim carried traffic, and the spread over replicas before the kill is reported.
    assert 0 < metrics["victim_share"] <= metrics["replica_share_max"]
    assert metrics["replica_share_min"] > 0


def test_failover_kills_the_replica_that_carries_pinned_traffic(tmp_path):
    # Keep-alive balance and one closed-loop user: one connection, so one replica answers everything and the
    # other is idle. The victim must be the busy one; the spread figures show the idle replica.
    check = load_check("inference_failover")
    config = check.Config.model_validate({"replicas": 2, "users": 1, "durationS": 10, "killAtS": 4,
                                          "maxTokens": 16, "consecutiveWindows": 2, "balance": "connections",
                                          "warmupPerReplica": 0})
    result = check.run(context(tmp_path), config)
    assert result.status == Status.PASS or "replica_share" in result.reason, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert metrics["victim_share"] == 1.0
    assert metrics["replica_share_min"] == 0.0 and metrics["replica_share_min_to_fair"] == 0.0
    before_kill = result.details["requests_per_replica"]["requests sent before the kill"]
    assert list(before_kill) == [str(result.details["victim_pid"])]


def test_two_replicas_share_the_load_run_after_run_and_paced_users_do_not_convoy(tmp_path):
    ctx = context(tmp_path)
    share_slo, = [slo for slo in parse_slos(ctx.env.spec.acceptance.slos)
                  if slo.metric == "inference.replica_share_min_to_fair"]
    config = InferenceConfig.model_validate({"replicas": 2, "users": 8, "durationS": 10, "maxTokens": 8})
    session_result = CheckResult("inference", declared=load_check("inference").metrics)
    with serving_session(ctx, config, "inference", session_result) as session:
        paced = [run_figures(ctx, config, session) for _ in range(3)]
    # Today's loop for contrast: no think time, no jitter, one keep-alive replica batching all users together.
    unpaced = config.model_copy(update={"replicas": 1, "balance": "connections", "think_time_s": 0.0,
                                        "start_jitter_s": 0.0, "duration_s": 6.0})
    with serving_session(ctx, unpaced, "inference", session_result) as session:
        lockstep = run_figures(ctx, unpaced, session)
    for figures in paced:
        assert share_slo.holds(figures["replica_share_min_to_fair"]), (share_slo.expression, paced)
        assert figures["starts_in_lockstep_fraction"] <= PACED_LOCKSTEP_MAX, paced
        assert figures["start_gap_ms.p50"] >= PACED_GAP_MIN_MS, paced
    assert lockstep["starts_in_lockstep_fraction"] >= LOCKSTEP_MIN, lockstep
    assert lockstep["start_gap_ms.p50"] < PACED_GAP_MIN_MS, lockstep


STOP_KILL_SLACK_S = 0.1
"""With no grace period, how long after the window's end a request may still complete: the users are killed
right after the stop is recorded, but a greenlet already woken by its last chunk finishes first."""


@pytest.mark.parametrize("grace_s", [10.0, 0.0])
def test_requests_in_flight_at_the_end_are_completed_in_the_grace_period_or_reported_abandoned(tmp_path, grace_s):
    ctx = context(tmp_path)
    # Long answers: the one replica decodes the 4 users' requests in one batch, so they end together and, for an
    # instant, none is in flight; Locust's stop timer lands on that instant about once in (answer tokens + 1) runs.
    config = InferenceConfig.model_validate({"replicas": 1, "users": 4, "durationS": 6, "maxTokens": 160,
                                             "thinkTimeS": 0, "stopGraceS": grace_s, "warmupPerReplica": 1})
    result = CheckResult("inference", declared=load_check("inference").metrics)
    with serving_session(ctx, config, "inference", result) as session:
        records, _ = run_load(ctx, config, session, result)
    log_dir = session.workdir / REQUEST_LOG_DIR
    windows = [MeasurementWindow.read(path) for path in log_dir.glob("window-*.json")]
    assert len(windows) == 1 and windows[0].grace_s == grace_s
    window = windows[0]
    logged = (tmp_path / result.artefacts["request_log"]).read_text().count("\n")
    assert logged == len(records) + result.metrics["warmup_requests"].value  # warm-up requests are logged too
    # Exact: every request sent is in the log or counted as abandoned.
    assert window.sent == logged + window.abandoned
    after_stop = [r for r in records if r.start <= window.stop < r.end]
    assert result.metrics["completed_in_grace"].value == len(after_stop)
    assert result.metrics["abandoned_at_stop"].value == window.abandoned
    assert not [r for r in records if r.start > window.stop]
    if grace_s:  # 4 users always busy: some were in flight at the stop, all completed
        assert after_stop and window.abandoned == 0 and all(r.ok for r in after_stop)
    else:  # killed at the stop: in flight ones are abandoned; only a chunk already on its way may still land in
        # the instant Locust takes to stop the users (measured: under 1 ms)
        assert window.abandoned >= 1
        assert all(r.end - window.stop < STOP_KILL_SLACK_S for r in after_stop), after_stop
    assert "grace period" in result.details["stop_semantics"]
