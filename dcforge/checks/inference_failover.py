"""`inference_failover`: the same Locust load, one replica SIGKILLed at t_kill. Measures
(docs/metrics.md#inference_failover):

- TTR: first t >= t_kill from which K consecutive 1-s windows have error rate <= limit and p95 e2e <= limit,
  minus t_kill (window p95 limit: recoveryP95Factor x steady-state p95 unless windowP95Ms is given);
- requests lost: failed or timed-out requests sent in [t_kill, t_kill + TTR], plus those in flight on the killed
  replica (listed in the details); excess failures = all failures - requests in flight on the killed replica;
- p95 e2e while recovering vs steady state, and that gunicorn respawned the replica and it served requests;
- the victim: the ready replica that answered the most requests so far, and its share of the requests sent before
  the kill; when no replica carries traffic there is nothing to fail over and the check fails.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from dcforge.steps.serving.load_metrics import LOAD_METRICS
from dcforge.placement.scope import single_node
from dcforge.placement.serving import failover_on_cluster
from dcforge.steps.serving.failover import Kill
from dcforge.steps.serving.load import RUN_METRICS, ServingSession, run_load, serving_session
from dcforge.steps.serving.plots import latency_plots
from dcforge.steps.serving.replicas import (REPLICA_SHARE_METRICS, IdleVictim, add_share_metrics, replica_shares,
                                             wait_for_busiest_replica)
from dcforge.steps.serving.settings import ServingLoadConfig
from dcforge.steps.serving.summary import add_summary_metrics
from dcforge.harness.check import CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult
from workloads.records import REPLICA_HEADER, RequestRecord


class InferenceFailoverConfig(ServingLoadConfig):
    kill_at_s: float = Field(default=8.0, gt=0)
    """Seconds after the load starts when one replica is SIGKILLed (must leave time to see it respawn); later when no
    replica has answered a request by then."""
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


@dataclass
class Recovery:
    """The failover figures, computed from the request log and the kill (no processes involved)."""

    ttr_s: float
    """Time to recover, or the time until the last request when the run never recovered."""
    recovered: bool
    window_p95_limit_ms: float
    steady_p95_ms: float
    recovery_p95_ms: float
    lost: list[RequestRecord]
    """Failed requests sent in [t_kill, t_kill + TTR], plus failed ones in flight at t_kill."""
    on_victim: list[RequestRecord]
    """Requests in flight on the killed replica at t_kill."""
    failed: int


class InferenceFailoverCheck:
    name = "inference_failover"
    description = "A replica is SIGKILLed under load: time to recover, requests lost, respawn, latency impact."
    Config = InferenceFailoverConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: a pod per replica on the inference pool, one deleted (dcforge/placement/serving.py)
    metrics = (
        *LOAD_METRICS,
        *RUN_METRICS,
        *REPLICA_SHARE_METRICS,
        MetricSpec("victim_share", "", None, "killed replica's answered requests / all answered requests, both "
                   "sent before the kill", "how much traffic the kill hit: 0 would make the failover untested"),
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
        result = CheckResult(self.name, declared=self.metrics)
        self._refuse_a_kill_too_late(ctx, config)
        return single_node(ctx, self, here=lambda: self.here(ctx, config, result),
                           pool=lambda: self.on_cluster(ctx, config, result))

    def on_cluster(self, ctx: CheckContext, config: InferenceFailoverConfig, result: CheckResult) -> CheckResult:
        """Target kubernetes: a server pod deleted (dcforge/placement/serving.py)."""
        ran = failover_on_cluster(ctx, config, self.name, result)
        if ran is None:
            return result
        records, t_start, kill, replicas_after = ran
        served_by_new = sum(r.replica == kill.respawned for r in records)
        return self._judge(ctx, config, result, records, t_start, kill, served_by_new, replicas_after)

    def here(self, ctx: CheckContext, config: InferenceFailoverConfig, result: CheckResult) -> CheckResult:
        with serving_session(ctx, config, self.name, result) as session:
            records, t_start, kill = self._load_with_a_kill(ctx, config, session, result)
            if isinstance(kill, IdleVictim):
                return result.fail(f"no replica to kill carries traffic, so failover cannot be measured: {kill}")
            served_by_new = sum(r.replica == kill.respawned for r in records) \
                or self._probe_replica(session, kill.respawned)
            replicas_after = len(session.server.ready_pids())
        result.details.update(victim_pid=int(kill.victim), respawned_pid=int(kill.respawned))
        return self._judge(ctx, config, result, records, t_start, kill, served_by_new, replicas_after)

    def _judge(self, ctx: CheckContext, config: InferenceFailoverConfig, result: CheckResult,
               records: list[RequestRecord], t_start: float, kill: Kill, served_by_new: int,
               replicas_after: int) -> CheckResult:
        """The failover figures and verdicts from the request log and the kill, wherever the run was."""
        recovery = measure_recovery(records, kill, config)
        self._add_metrics(result, records, kill, recovery, config, served_by_new)
        self._add_victim_share(result, records, kill, config)
        result.details.update(victim=kill.victim, respawned=kill.respawned, kill_at_s=kill.t_kill - t_start,
                              replicas_after=replicas_after, window_p95_limit_ms=recovery.window_p95_limit_ms,
                              lost_requests=[{"sent_at_s": round(r.start - t_start, 3), "error": r.error,
                                              "replica": r.replica} for r in recovery.lost])
        if not recovery.recovered:
            result.fail(f"no {config.consecutive_windows} consecutive healthy 1-s windows after the kill")
        if served_by_new == 0:
            result.fail(f"the respawned replica ({kill.respawned}) answered no request")
        if replicas_after < config.replicas:
            result.fail(f"{replicas_after}/{config.replicas} replicas ready after the run")
        result.plots.extend(latency_plots(records, t_start, [{"x": round(kill.t_kill - t_start, 3),
                                                             "label": kill.what}]))
        ctx.log(f"TTR {recovery.ttr_s:.1f} s, {len(recovery.lost)} requests lost, respawn {kill.respawn_s:.1f} s")
        return result

    def _refuse_a_kill_too_late(self, ctx: CheckContext, config: InferenceFailoverConfig) -> None:
        if config.kill_at_s >= config.duration_s - config.consecutive_windows:
            from dcforge.errors import ConfigError

            raise ConfigError(ctx.env.path, f"dcforge:acceptance.settings.{self.name}.killAtS",
                              f"{config.kill_at_s:g} s leaves no time to recover within durationS "
                              f"{config.duration_s:g} s")

    @staticmethod
    def _load_with_a_kill(ctx: CheckContext, config: InferenceFailoverConfig, session: ServingSession,
                          result: CheckResult) -> tuple[list[RequestRecord], float, Kill | IdleVictim]:
        """The Locust run, with the busiest ready replica SIGKILLed at kill_at_s (or as soon after as one has
        answered) and its respawn awaited meanwhile; IdleVictim when no replica answered in time."""
        server = session.server
        original = set(server.worker_pids())
        kills: list[Kill | IdleVictim] = []

        def kill_one_replica(t_start: float, request_log_dir: Path) -> None:
            time.sleep(max(0.0, t_start + config.kill_at_s - time.time()))
            try:  # at most until too little of the run is left to see a recovery
                victim = wait_for_busiest_replica(request_log_dir, server.ready_pids,
                                                  t_start + config.duration_s - config.consecutive_windows)
            except IdleVictim as refusal:
                kills.append(refusal)
                return
            t_kill = time.time()
            os.kill(victim, signal.SIGKILL)
            ctx.log(f"SIGKILL replica pid {victim} at t={t_kill - t_start:.1f} s")
            pid, seconds = server.wait_respawn(original, max(5.0, t_start + config.duration_s - time.time() + 30))
            kills.append(Kill(t_kill, str(victim), str(pid), seconds, f"SIGKILL replica {victim}"))

        records, t_start = run_load(ctx, config, session, result, during=kill_one_replica)
        return records, t_start, kills[0]

    @staticmethod
    def _add_metrics(result: CheckResult, records: list[RequestRecord], kill: Kill, recovery: Recovery,
                     config: InferenceFailoverConfig, served_by_new: int) -> None:
        from loadtests.metrics import summarize

        add_summary_metrics(result, summarize(records, config.request_slo()))
        result.add_metric("ttr_s", recovery.ttr_s, context=f"K={config.consecutive_windows}, error rate <= "
                          f"{config.window_max_error_rate:g}, p95 <= {recovery.window_p95_limit_ms:.0f} ms")
        result.add_metric("replica_respawn_s", kill.respawn_s)
        result.add_metric("ttr_over_respawn_s", recovery.ttr_s - kill.respawn_s)
        result.add_metric("requests_lost", len(recovery.lost))
        result.add_metric("killed_replica_in_flight", len(recovery.on_victim))
        result.add_metric("excess_failures", recovery.failed - len(recovery.on_victim))
        result.add_metric("steady_p95_ms", recovery.steady_p95_ms)
        result.add_metric("recovery_p95_ms", recovery.recovery_p95_ms)
        result.add_metric("recovery_p95_ratio", recovery.recovery_p95_ms / recovery.steady_p95_ms)
        result.add_metric("respawned_replica_requests", served_by_new)

    @staticmethod
    def _add_victim_share(result: CheckResult, records: list[RequestRecord], kill: Kill,
                          config: InferenceFailoverConfig) -> None:
        """Replica shares and the victim's share over the requests sent before the kill; an idle victim fails."""
        shares = replica_shares([r for r in records if r.start < kill.t_kill], config.replicas)
        add_share_metrics(result, shares, "requests sent before the kill")
        victim_share = shares.counts.get(kill.victim, 0) / shares.total if shares.total else 0.0
        result.add_metric("victim_share", victim_share)
        if victim_share == 0:
            result.fail(f"the killed replica ({kill.victim}) answered no request before the kill: an idle "
                        "victim tests nothing")

    @staticmethod
    def _probe_replica(session: ServingSession, replica: str, attempts: int = 60) -> int:
        """Requests on fresh connections until one lands on `replica` (the kernel spreads accepts over replicas)."""
        import httpx

        headers = {"Authorization": f"Bearer {session.api_key}"}
        for _ in range(attempts):
            response = httpx.get(f"{session.server.base_url}/v1/models", headers=headers, verify=False, timeout=10)
            if response.headers.get(REPLICA_HEADER) == replica:
                return 1
        return 0


def measure_recovery(records: list[RequestRecord], kill: Kill, config: InferenceFailoverConfig) -> Recovery:
    """TTR, requests lost and the latency impact of the kill, from the request log alone."""
    from loadtests.metrics import time_to_recover

    t_kill = kill.t_kill
    steady_p95 = _p95([r.e2e_s * 1000 for r in records if r.start < t_kill and r.ok])
    window_p95 = config.window_p95_ms or config.recovery_p95_factor * steady_p95
    t_end = max(r.start for r in records)
    ttr = time_to_recover(records, t_kill, t_end, consecutive=config.consecutive_windows,
                          max_error_rate=config.window_max_error_rate, max_p95_ms=window_p95)
    ttr_value = ttr if ttr is not None else t_end - t_kill
    in_flight = [r for r in records if r.start <= t_kill <= r.end]
    on_victim = [r for r in in_flight if r.replica == kill.victim or (not r.ok and not r.replica)]
    lost = [r for r in records if not r.ok and (t_kill <= r.start <= t_kill + ttr_value or r in in_flight)]
    recovery = [r.e2e_s * 1000 for r in records
                if r.ok and t_kill <= r.start <= t_kill + ttr_value + config.consecutive_windows]
    return Recovery(ttr_s=ttr_value, recovered=ttr is not None, window_p95_limit_ms=window_p95,
                    steady_p95_ms=steady_p95, recovery_p95_ms=_p95(recovery), lost=lost, on_victim=on_victim,
                    failed=sum(not r.ok for r in records))
