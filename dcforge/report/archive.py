"""The last N reports of a scheduled run, kept where an operator reads them: one ConfigMap per run in the acceptance
namespace (`dcforge accept --archive-reports NAMESPACE/SCHEDULE`, what the CronJob passes; docs/node-health.md).

`kubectl get configmaps -l dcforge.io/schedule=<name>` lists them; key `report.json` is the report. A ConfigMap
holds at most 1 MiB, so a report over SIZE_LIMIT keeps its verdicts and figures without the plots and per-node
details (and says so in `archive_truncated`), and, should that still be too large, without the checks' metrics.
After writing, the oldest beyond `keep` of that schedule are deleted. The access needed is REPORT_ARCHIVE_ACCESS.
"""

from __future__ import annotations

import json
import re
from typing import Any

SCHEDULE_LABEL = "dcforge.io/schedule"
SIZE_LIMIT = 900 * 1024
"""Bytes of report.json in one ConfigMap: under the API server's 1 MiB object limit, with room for metadata."""
KEY = "report.json"


def fitted(report: dict[str, Any]) -> str:
    """report.json's text, shrunk (and marked) until it fits SIZE_LIMIT."""
    text = json.dumps(report, default=str)
    for dropped, keys in (("plots and per-check details", ("plots", "details")),
                          ("plots, per-check details and metrics", ("plots", "details", "metrics"))):
        if len(text.encode()) <= SIZE_LIMIT:
            return text
        smaller = {**report, "archive_truncated": f"{dropped} dropped to fit a ConfigMap",
                   "checks": [{k: v for k, v in check.items() if k not in keys} for check in report.get("checks", [])]}
        text = json.dumps(smaller, default=str)
    return text


def configmap_name(schedule: str, report: dict[str, Any]) -> str:
    stamp = re.sub(r"[^0-9]", "", str(report.get("metadata", {}).get("started_at", "")))[:14]
    return f"dcforge-report-{schedule}-{stamp}"


def archive(report: dict[str, Any], api_client: Any, target: str, keep: int) -> str:
    """Write this run's ConfigMap and delete the oldest of the schedule beyond `keep`; one line saying what.
    `target` is NAMESPACE/SCHEDULE. Raises the client's ApiException."""
    from kubernetes import client

    namespace, schedule = target.split("/", 1)
    core = client.CoreV1Api(api_client)
    name = configmap_name(schedule, report)
    labels = {SCHEDULE_LABEL: schedule, "app.kubernetes.io/managed-by": "dcforge",
              "dcforge.io/status": str(report.get("status", ""))}
    core.create_namespaced_config_map(namespace, {"apiVersion": "v1", "kind": "ConfigMap",
                                                  "metadata": {"name": name, "namespace": namespace, "labels": labels},
                                                  "data": {KEY: fitted(report)}}, _preload_content=False)
    listed = json.loads(core.list_namespaced_config_map(namespace, label_selector=f"{SCHEDULE_LABEL}={schedule}",
                                                        _preload_content=False).data)
    names = sorted(item["metadata"]["name"] for item in listed.get("items", []))  # the name ends in the start time
    for old in names[:-keep]:
        core.delete_namespaced_config_map(old, namespace, _preload_content=False)
    return f"report kept in configmap {namespace}/{name} ({min(len(names), keep)} of schedule {schedule} kept)"
