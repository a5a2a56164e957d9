"""A run's results as Prometheus metrics (docs/prometheus.md): a node-exporter textfile and/or a Pushgateway push.

Rendered from report.json alone (so `dcforge accept` and a later `dcforge report` give the same figures), in the
exposition format through prometheus_client. Every series carries `env`; gauges only, since each run replaces the
previous one's figures (a Pushgateway group, a textfile):

- dcforge_check_passed{env,check}: 1 passed, 0 failed or errored (skipped checks have no series)
- dcforge_check_duration_seconds{env,check}
- dcforge_slo_value{env,metric,stat} and dcforge_slo_passed{env,metric,stat} (skipped SLOs have no series; an SLO
  whose metric is missing has dcforge_slo_passed 0 and no value)
- dcforge_node_verdict{env,node,check}: 1 the node passed that check, 0 it failed it
- dcforge_node_healthy{env,node}: 1 passed every check with rows for it, 0 not
- dcforge_node_recommended_action_info{env,node,action}: always 1, the action in the label (an info metric)
- dcforge_run_passed{env}, dcforge_run_duration_seconds{env}, dcforge_last_run_timestamp_seconds{env}
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest, push_to_gateway, write_to_textfile

from dcforge.report.nodes import judge_nodes

PUSH_JOB = "dcforge"
"""The Pushgateway job; the group is {job=dcforge, env=<environment>}, so each environment's last run replaces its
own previous one and no other."""
PLAIN_STAT = "value"
"""The `stat` label of an SLO on a metric without a statistic (`train.tokens_per_s`)."""
_STAT = re.compile(r"^(p\d+(\.\d+)?|mean|median|min|max|avg|std|stddev)$")


def slo_labels(key: str) -> tuple[str, str]:
    """`<check>.<metric>[.<stat>]` -> (metric, stat): `inference.ttft_ms.p95` -> (`inference.ttft_ms`, `p95`)."""
    head, _, last = key.rpartition(".")
    return (head, last) if head.count(".") >= 1 and _STAT.match(last) else (key, PLAIN_STAT)


def _epoch(stamp: str | None) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return None


def registry_of(report: dict[str, Any]) -> CollectorRegistry:
    """The metrics of one report (report.json's document) in a registry of their own."""
    registry = CollectorRegistry(auto_describe=True)
    env = str(report.get("metadata", {}).get("environment", ""))

    def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, text, ("env", *labels), registry=registry)

    check_passed = gauge("dcforge_check_passed", "1 when the check passed, 0 when it failed or errored.", ("check",))
    check_duration = gauge("dcforge_check_duration_seconds", "Wall-clock time the check ran.", ("check",))
    for check in report.get("checks", []):
        if check.get("status") == "skipped":
            continue
        check_passed.labels(env, check["name"]).set(1 if check.get("status") == "pass" else 0)
        check_duration.labels(env, check["name"]).set(float(check.get("duration_s") or 0.0))

    slo_value = gauge("dcforge_slo_value", "The measured value an SLO judged.", ("metric", "stat"))
    slo_passed = gauge("dcforge_slo_passed", "1 when the SLO held, 0 when it failed or its metric is missing.",
                       ("metric", "stat"))
    for slo in report.get("slos", []):
        if slo.get("verdict") == "skipped":
            continue
        metric, stat = slo_labels(slo["metric"])
        slo_passed.labels(env, metric, stat).set(1 if slo["verdict"] == "pass" else 0)
        if slo.get("value") is not None:
            slo_value.labels(env, metric, stat).set(float(slo["value"]))

    verdict = gauge("dcforge_node_verdict", "1 when the node passed the check, 0 when it failed it.",
                    ("node", "check"))
    healthy = gauge("dcforge_node_healthy", "1 when the node passed every check with rows for it, 0 when not.",
                    ("node",))
    action = gauge("dcforge_node_recommended_action_info",
                   "What an operator should do about the node (dcforge.findings.Action), in the action label.",
                   ("node", "action"))
    for node, judged in sorted(judge_nodes(report).items()):
        for check, passed in judged.checks.items():
            verdict.labels(env, node, check).set(1 if passed else 0)
        healthy.labels(env, node).set(1 if judged.passed else 0)
        action.labels(env, node, judged.action.value).set(1)

    metadata = report.get("metadata", {})
    gauge("dcforge_run_passed", "1 when every check and SLO of the run passed.").labels(env).set(
        1 if report.get("status") == "pass" else 0)
    started, finished = _epoch(metadata.get("started_at")), _epoch(metadata.get("finished_at"))
    if started is not None and finished is not None:
        gauge("dcforge_run_duration_seconds", "Wall-clock time of the whole run.").labels(env).set(finished - started)
    if finished is not None:
        gauge("dcforge_last_run_timestamp_seconds", "When the run finished (Unix time).").labels(env).set(finished)
    return registry


def exposition(report: dict[str, Any]) -> str:
    """The report's metrics in the Prometheus text exposition format."""
    return generate_latest(registry_of(report)).decode()


def write_textfile(report: dict[str, Any], path: Path) -> None:
    """For node-exporter's textfile collector: written to a temporary file beside `path`, then renamed over it (the
    collector never reads half a file; it reads only `*.prom`, so the temporary name is never collected)."""
    if path.suffix != ".prom":
        raise ValueError(f"metrics textfile {path}: node-exporter's textfile collector reads only *.prom files")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry_of(report))


def push(report: dict[str, Any], gateway: str, timeout_s: float = 10.0) -> None:
    """Replace this environment's group on the Pushgateway with this run's metrics (PUT: series of the previous
    run that this one lacks, e.g. a node gone, disappear)."""
    env = str(report.get("metadata", {}).get("environment", ""))
    push_to_gateway(gateway, PUSH_JOB, registry_of(report), grouping_key={"env": env}, timeout=timeout_s)


def publish(report: dict[str, Any], textfile: Path | None, gateway: str | None) -> list[str]:
    """Write and/or push, as configured; returns one line per destination (what was done, or why it failed:
    an unreachable gateway never fails the run, it is reported)."""
    lines = []
    if textfile is not None:
        try:
            write_textfile(report, textfile)
            lines.append(f"metrics written to {textfile}")
        except (OSError, ValueError) as error:
            lines.append(f"error: metrics textfile {textfile}: {error}")
    if gateway:
        try:
            push(report, gateway)
            lines.append(f"metrics pushed to {gateway} (job {PUSH_JOB})")
        except OSError as error:  # URLError, connection refused, timeouts, HTTP errors are all OSErrors
            lines.append(f"error: Pushgateway {gateway}: {str(error).splitlines()[0][:200]}")
    return lines
