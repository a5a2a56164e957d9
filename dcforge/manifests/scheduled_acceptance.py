"""Scheduled acceptance in the cluster (`dcforge:acceptance.schedule`, docs/node-health.md): a CronJob per schedule
in the acceptance namespace, running `dcforge accept` in the acceptance image under the Acceptance ServiceAccount
(in-cluster config), with the environment file from a ConfigMap.

Each CronJob: concurrencyPolicy Forbid (a slow run is never overlapped), history limits, the schedule's time limit
as activeDeadlineSeconds (SIGTERM: the run keeps its report up to there), restricted Pod Security, the token
mounted in its own pod only. Each run keeps its report.json in a ConfigMap (dcforge/report/archive.py), the last
`keepReports` per schedule; a Role in the namespace grants exactly that (REPORT_ARCHIVE_ACCESS).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import yaml

from dcforge.executors.kubernetes_access import REPORT_ARCHIVE_ACCESS, rbac_rules
from dcforge.manifests.common import ACCEPTANCE_SERVICE_ACCOUNT, metadata, network_policy
from dcforge.manifests.security_baseline import RBAC_API
from dcforge.report.archive import SCHEDULE_LABEL
from dcforge.spec.models import Environment, ScheduledAcceptance

ENVIRONMENT_CONFIGMAP = "dcforge-environment"
ENVIRONMENT_DIR = "/etc/dcforge"
REPORTS_DIR = "/tmp/reports"  # an emptyDir: the report that stays is the ConfigMap the run writes
ARCHIVER = f"{ACCEPTANCE_SERVICE_ACCOUNT}-report-archiver"
RUN_USER_ID = 1000
"""The acceptance image's user (Containerfile: USER 1000:1000)."""


def environment_file_name(spec: Environment) -> str:
    return f"Pulumi.{spec.name}.yaml"


def environment_configmap(spec: Environment, namespace: str) -> dict[str, Any]:
    """The environment file the scheduled runs load, written back from the validated spec (the spec has no
    secrets: encrypted values are refused for its keys)."""
    config = {f"dcforge:{key}": value for key, value in spec.model_dump(by_alias=True, exclude_none=True,
                                                                         mode="json").items() if key != "name"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(ENVIRONMENT_CONFIGMAP, namespace),
            "data": {environment_file_name(spec): yaml.safe_dump({"config": config}, sort_keys=True)}}


def accept_command(spec: Environment, run: ScheduledAcceptance, namespace: str) -> list[str]:
    command = ["dcforge", "accept", "--env-file", f"{ENVIRONMENT_DIR}/{environment_file_name(spec)}",
               "--only", ",".join(run.checks), "--reports", REPORTS_DIR,
               "--archive-reports", f"{namespace}/{run.name}"]
    if spec.acceptance.allow_node_taints:
        command.append("--taint-failed")
    if spec.acceptance.allow_node_conditions:
        command.append("--mark-nodes")
    return command  # the Pushgateway comes from acceptance.metrics in the environment file


def cron_job(spec: Environment, run: ScheduledAcceptance, namespace: str) -> dict[str, Any]:
    acceptance = spec.acceptance
    container = {
        "name": "accept", "image": acceptance.image, "imagePullPolicy": acceptance.image_pull_policy,
        "command": accept_command(spec, run, namespace),
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "environment", "mountPath": ENVIRONMENT_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "metadata": {"labels": {SCHEDULE_LABEL: run.name}},
        "spec": {
            "serviceAccountName": ACCEPTANCE_SERVICE_ACCOUNT,
            "automountServiceAccountToken": True,  # this pod talks to the API; the jobs it starts do not
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_USER_ID, "runAsGroup": RUN_USER_ID,
                                "fsGroup": RUN_USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "environment", "configMap": {"name": ENVIRONMENT_CONFIGMAP}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        },
    }
    cron_spec: dict[str, Any] = {
        "schedule": run.cron, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 600,
        "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
        "jobTemplate": {"spec": {"backoffLimit": 0, "activeDeadlineSeconds": run.time_limit_s,
                                 "ttlSecondsAfterFinished": 7 * 24 * 3600, "template": pod}},
    }
    if run.time_zone:
        cron_spec["timeZone"] = run.time_zone
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": metadata(f"dcforge-accept-{run.name}", namespace, {SCHEDULE_LABEL: run.name}),
            "spec": cron_spec}


def scheduled_acceptance(spec: Environment, namespace: str) -> list[dict[str, Any]]:
    """The objects of every schedule, empty without one."""
    if not spec.acceptance.schedule:
        return []
    objects = [
        environment_configmap(spec, namespace),
        {"apiVersion": RBAC_API, "kind": "Role", "metadata": metadata(ARCHIVER, namespace),
         "rules": rbac_rules(REPORT_ARCHIVE_ACCESS)},
        {"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": metadata(ARCHIVER, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ARCHIVER},
         "subjects": [{"kind": "ServiceAccount", "name": ACCEPTANCE_SERVICE_ACCOUNT, "namespace": namespace}]},
    ]
    if gateway := spec.acceptance.metrics.pushgateway:
        url = urlparse(gateway)
        port = url.port or (443 if url.scheme == "https" else 80)
        # default-deny egress: the runs may reach the Pushgateway's port, in whichever namespace it runs
        objects.append(network_policy("allow-to-pushgateway", namespace, {
            "podSelector": {"matchExpressions": [{"key": SCHEDULE_LABEL, "operator": "Exists"}]},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": port}]}]}))
    objects += [cron_job(spec, run, namespace) for run in spec.acceptance.schedule]
    return objects
