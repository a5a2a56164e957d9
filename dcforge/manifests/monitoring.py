"""Scrape configuration for the Prometheus operator (`dcforge:monitoring.prometheusOperator: true`).

- ServiceMonitor `dcgm-exporter` in the GPU Operator's namespace: the Service the operator creates for its DCGM
  exporter (label `app: nvidia-dcgm-exporter`, port `gpu-metrics`), declared only when the environment has GPU pools.
- PodMonitor `inference-servers` in each inference namespace: every pod labelled `dcforge.io/metrics: "true"`,
  port `http`, path `/metrics` (the bundled server's Prometheus endpoint).

Objects only exist where the operator's CRDs do, so nothing is declared unless the spec says so; the `monitoring`
acceptance check then proves the targets report.
"""

from __future__ import annotations

from typing import Any

from dcforge.manifests.common import GPU_OPERATOR_NAMESPACE, metadata, namespaces_with_purpose
from dcforge.spec.models import Environment

MONITORING_API_VERSION = "monitoring.coreos.com/v1"
METRICS_LABEL = "dcforge.io/metrics"
DCGM_EXPORTER_SELECTOR = {"app": "nvidia-dcgm-exporter"}
DCGM_EXPORTER_PORT = "gpu-metrics"
INFERENCE_METRICS_PORT = "http"


def scrape_monitors(spec: Environment) -> list[dict[str, Any]]:
    """The ServiceMonitor/PodMonitor objects of the environment, empty unless prometheusOperator is declared."""
    monitoring = spec.monitoring
    if not monitoring.prometheus_operator:
        return []
    labels = dict(monitoring.selector_labels)
    objects: list[dict[str, Any]] = []
    if spec.gpu_pools:
        objects.append({
            "apiVersion": MONITORING_API_VERSION, "kind": "ServiceMonitor",
            "metadata": metadata("dcgm-exporter", GPU_OPERATOR_NAMESPACE, labels),
            "spec": {"selector": {"matchLabels": DCGM_EXPORTER_SELECTOR},
                     "namespaceSelector": {"matchNames": [GPU_OPERATOR_NAMESPACE]},
                     "endpoints": [{"port": DCGM_EXPORTER_PORT, "path": "/metrics",
                                    "interval": monitoring.scrape_interval}]},
        })
    for namespace in namespaces_with_purpose(spec, "inference"):
        objects.append({
            "apiVersion": MONITORING_API_VERSION, "kind": "PodMonitor",
            "metadata": metadata("inference-servers", namespace, labels),
            "spec": {"selector": {"matchLabels": {METRICS_LABEL: "true"}},
                     "namespaceSelector": {"matchNames": [namespace]},
                     "podMetricsEndpoints": [{"port": INFERENCE_METRICS_PORT, "path": "/metrics",
                                              "interval": monitoring.scrape_interval}]},
        })
    return objects


ACCEPTANCE_ALERT = "DcforgeNodeFailedTwice"


def longest_gap_s(cron: str, samples: int = 600) -> int:
    """The longest time between two consecutive runs of a cron schedule, over its next `samples` runs from a fixed
    instant (a schedule's gaps repeat within a year for the schedules one declares)."""
    import datetime as dt

    from cronsim import CronSim

    from dcforge.spec.models import cron_fields

    runs = CronSim(cron_fields(cron), dt.datetime(2026, 1, 1))
    previous, gap = next(runs), 0
    for _ in range(samples):
        current = next(runs)
        gap, previous = max(gap, int((current - previous).total_seconds())), current
    return gap


def alert_wait_s(spec: Environment) -> int:
    """How long a node must stay failed before the alert fires so that it fired only after two runs failed: one
    gap between runs of the sparsest schedule, plus the time limit within which the second run has reported."""
    return max(longest_gap_s(run.cron) + run.time_limit_s for run in spec.acceptance.schedule)


def alert_rule_groups(spec: Environment) -> list[dict[str, Any]]:
    """The rule groups (the Prometheus rules-file form, also a PrometheusRule's spec.groups)."""
    wait = alert_wait_s(spec)
    return [{"name": "dcforge-acceptance", "rules": [{
        "alert": ACCEPTANCE_ALERT,
        # dcforge_node_healthy is replaced by every run's push: 0 for longer than a run's gap means the next
        # scheduled run found the node failed too (a pass in between sets it to 1 and resets the wait)
        "expr": f'dcforge_node_healthy{{env="{spec.name}"}} == 0',
        "for": f"{wait}s",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "Node {{ $labels.node }} failed dcforge acceptance twice in a row",
            "description": ("Node {{ $labels.node }} of environment {{ $labels.env }} failed two consecutive "
                            "scheduled acceptance runs; see its DcforgeNodeHealthy condition and the "
                            "dcforge.io/recommended-action annotation."),
        },
    }]}]


def acceptance_alert_rules(spec: Environment) -> list[dict[str, Any]]:
    """The PrometheusRule, only where `monitoring.acceptanceAlerts` is set and acceptance is scheduled."""
    if not (spec.monitoring.acceptance_alerts and spec.acceptance.schedule):
        return []
    from dcforge.manifests.common import acceptance_namespace

    return [{"apiVersion": MONITORING_API_VERSION, "kind": "PrometheusRule",
             "metadata": metadata("dcforge-acceptance", acceptance_namespace(spec),
                                  dict(spec.monitoring.selector_labels)),
             "spec": {"groups": alert_rule_groups(spec)}}]
