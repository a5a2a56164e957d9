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
