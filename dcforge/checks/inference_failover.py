"""`inference_failover`: the same Locust load, one replica SIGKILLed at t_kill. Measures
(docs/metrics.md#inference_failover):

- TTR: first t >= t_kill from which K consecutive 1-s windows have error rate <= limit and p95 e2e <= limit,
  minus t_kill (window p95 limit: recoveryP95Factor x steady-state p95 unless windowP95Ms is given);
- requests lost: failed or timed-out requests sent in [t_kill, t_kill + TTR], plus those in flight on the killed
  replica (listed in the details); excess failures = all failures - requests in flight on the killed replica;
- p95 e2e while recovering vs steady state, and that gunicorn respawned the replica and it served requests.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from pydantic import Field

from dcforge.checks._load_metrics import LOAD_METRICS
from dcforge.checks._serving import (ServingLoadConfig, add_summary_metrics, latency_plots, run_load,
                                     serving_session)
from dcforge.harness.check import CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult


class InferenceFailoverConfig(ServingLoadConfig):
    kill_at_s: float = Field(default=8.0, gt=0)
    """Seconds after the load starts when one replica is SIGKILLed (must leave time to see it respawn)."""
    consecutive_windows: int = Field(default=3, ge=1)
    """K: healthy 1-s windows in a row that count as recovered."""
    window_max_error_rate: float = Field(default=0.0, ge=0, le=1)
    """Error-rate limit of a healthy window."""
    window_p95_ms: float | None = Field(default=None, gt=0)
    """p95 e2e limit of a healthy window; default recoveryP95Factor x the steady-state p95."""
    recovery_p95_factor: float = Field(default=2.0, gt=0)
    """Healthy-window p95 limit as a multiple of the steady-state p95 (when windowP95Ms is not set)."""


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


class InferenceFailoverCheck:
    name = "inference_failover"
    description = "A replica is SIGKILLed under load: time to recover, requests lost, respawn, latency impact."
    Config = InferenceFailoverConfig
    requires_declared_gpus = True
    metrics = (
        *LOAD_METRICS,
        MetricSpec("ttr_s", "s", "lower", "first t >= t_kill starting K consecutive healthy 1-s windows - t_kill",
                   "time to recover: how long users see errors or slow answers after a replica dies"),
        MetricSpec("replica_respawn_s", "s", "lower", "SIGKILL -> new replica ready",
                   "how long gunicorn takes to replace the killed replica"),
        MetricSpec("ttr_over_respawn_s", "s", "lower", "TTR - replica respawn time (goal: <= 5 s)",
                   "recovery time beyond the unavoidable model load"),
        MetricSpec("requests_lost", "requests", "lower",
                   "failed requests sent in [t_kill, t_kill+TTR] + failed in flight at t_kill",
                   "requests users lost to the failure (listed in the details)"),
        MetricSpec("killed_replica_in_flight", "requests", None,
                   "requests in flight on the killed replica at t_kill", "requests the kill could not avoid losing"),
        MetricSpec("excess_failures", "requests", "lower",
                   "all failed requests - requests in flight on the killed replica",
                   "failures beyond the killed replica's own requests: should be 0"),
        MetricSpec("steady_p95_ms", "ms", "lower", "p95 e2e of requests sent before t_kill",
                   "latency before the failure"),
        MetricSpec("recovery_p95_ms", "ms", "lower", "p95 e2e of requests sent in [t_kill, t_kill + TTR + K s]",
                   "latency while recovering"),
        MetricSpec("recovery_p95_ratio", "", "lower", "recovery p95 / steady p95",
                   "how much slower answers are while recovering"),
        MetricSpec("respawned_replica_requests", "requests", "higher", "requests answered by the respawned replica",
                   "proof that the new replica serves"),
    )

    def run(self, ctx: CheckContext, config: InferenceFailoverConfig) -> CheckResult:
        from loadtests.metrics import summarize, time_to_recover

        result = CheckResult(self.name, declared=self.metrics)
        if config.kill_at_s >= config.duration_s - config.consecutive_windows:
            from dcforge.errors import ConfigError

            raise ConfigError(ctx.env.path, f"dcforge:acceptance.settings.{self.name}.killAtS",
                              f"{config.kill_at_s:g} s leaves no time to recover within durationS "
                              f"{config.duration_s:g} s")
        kill: dict[str, float | int] = {}
        with serving_session(ctx, config, self.name, result) as session:
            server = session.server
            original = set(server.worker_pids())

            def kill_one_replica(t_start: float) -> None:
                time.sleep(max(0.0, t_start + config.kill_at_s - time.time()))
                victim = sorted(server.ready_pids())[0]
                kill["t_kill"] = time.time()
                os.kill(victim, signal.SIGKILL)
                kill["victim"] = victim
                ctx.log(f"SIGKILL replica pid {victim} at t={kill['t_kill'] - t_start:.1f} s")
                pid, seconds = server.wait_respawn(original, max(5.0, t_start + config.duration_s - time.time() + 30))
                kill.update(respawned=pid, respawn_s=seconds)

            records, t_start = run_load(ctx, config, session, result, during=kill_one_replica)
            served_by_new = sum(r.get("replica") == str(kill["respawned"]) for r in records)
            if served_by_new == 0:
                served_by_new = self._probe_replica(session, int(kill["respawned"]))
            replicas_after = len(server.ready_pids())

        t_kill, victim = float(kill["t_kill"]), int(kill["victim"])
        steady = [r for r in records if r["start"] < t_kill]
        steady_p95 = _p95([r["e2e_s"] * 1000 for r in steady if r["ok"]])
        window_p95 = config.window_p95_ms or config.recovery_p95_factor * steady_p95
        t_end = max(r["start"] for r in records)
        ttr = time_to_recover(records, t_kill, t_end, consecutive=config.consecutive_windows,
                              max_error_rate=config.window_max_error_rate, max_p95_ms=window_p95)
        recovered = ttr is not None
        ttr_value = ttr if recovered else t_end - t_kill
        in_flight = [r for r in records if r["start"] <= t_kill <= r["end"]]
        on_victim = [r for r in in_flight if r.get("replica") == str(victim) or (not r["ok"] and not r.get("replica"))]
        lost = [r for r in records if not r["ok"] and (t_kill <= r["start"] <= t_kill + ttr_value or r in in_flight)]
        failed = [r for r in records if not r["ok"]]
        recovery = [r["e2e_s"] * 1000 for r in records
                    if r["ok"] and t_kill <= r["start"] <= t_kill + ttr_value + config.consecutive_windows]
        recovery_p95 = _p95(recovery)

        add_summary_metrics(result, summarize(records))
        result.add_metric("ttr_s", ttr_value, context=f"K={config.consecutive_windows}, error rate <= "
                          f"{config.window_max_error_rate:g}, p95 <= {window_p95:.0f} ms")
        result.add_metric("replica_respawn_s", kill["respawn_s"])
        result.add_metric("ttr_over_respawn_s", ttr_value - float(kill["respawn_s"]))
        result.add_metric("requests_lost", len(lost))
        result.add_metric("killed_replica_in_flight", len(on_victim))
        result.add_metric("excess_failures", len(failed) - len(on_victim))
        result.add_metric("steady_p95_ms", steady_p95)
        result.add_metric("recovery_p95_ms", recovery_p95)
        result.add_metric("recovery_p95_ratio", recovery_p95 / steady_p95)
        result.add_metric("respawned_replica_requests", served_by_new)
        result.details.update(victim_pid=victim, respawned_pid=kill["respawned"], kill_at_s=t_kill - t_start,
                              replicas_after=replicas_after, window_p95_limit_ms=window_p95,
                              lost_requests=[{"sent_at_s": round(r["start"] - t_start, 3), "error": r["error"],
                                              "replica": r.get("replica", "")} for r in lost])
        if not recovered:
            result.fail(f"no {config.consecutive_windows} consecutive healthy 1-s windows after the kill")
        if served_by_new == 0:
            result.fail(f"the respawned replica (pid {kill['respawned']}) answered no request")
        if replicas_after < config.replicas:
            result.fail(f"{replicas_after}/{config.replicas} replicas ready after the run")
        result.plots.extend(latency_plots(records, t_start, [{"x": round(t_kill - t_start, 3),
                                                             "label": f"SIGKILL replica {victim}"}]))
        ctx.log(f"TTR {ttr_value:.1f} s, {len(lost)} requests lost, respawn {kill['respawn_s']:.1f} s")
        return result

    @staticmethod
    def _probe_replica(session, pid: int, attempts: int = 60) -> int:
        """Requests on fresh connections until one lands on `pid` (the kernel spreads accepts over replicas)."""
        import httpx

        headers = {"Authorization": f"Bearer {session.api_key}"}
        for _ in range(attempts):
            response = httpx.get(f"{session.server.base_url}/v1/models", headers=headers, verify=False, timeout=10)
            if response.headers.get("x-dcforge-replica") == str(pid):
                return 1
        return 0
