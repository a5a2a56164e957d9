"""Scheduled acceptance in the cluster (`dcforge:acceptance.schedule`): the cron syntax and its companions refused
in one line naming the key, the CronJob each schedule declares (Forbid, history and time limits, the Acceptance
ServiceAccount, restricted Pod Security, a command the real CLI parses, an environment file that loads back to the
same spec), the last reports kept as ConfigMaps on the fake API (kmock), and the PrometheusRule through the stack
program under Pulumi mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcforge.manifests.scheduled_acceptance import ENVIRONMENT_CONFIGMAP, scheduled_acceptance
from dcforge.spec import load_environment
from dcforge.spec.models import Environment

REPO = Path(__file__).resolve().parents[2]


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", "validate", "--env-file", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("old, new, words", [
    ('cron: "0 * * * *"', 'cron: "0 * * *"', "dcforge:acceptance.schedule[0].cron: schedule '0 * * *' is not cron "
                                             "syntax (Wrong number of fields): expected five fields"),
    ('cron: "0 * * * *"', 'cron: "0 12 L * *"', "dcforge:acceptance.schedule[0].cron: schedule '0 12 L * *': "
                                                "Kubernetes CronJobs take five fields"),
    ("checks: [gpu_health], timeLimitS", "checks: [fio], timeLimitS",
     "dcforge:acceptance.schedule[0].checks: fio not in acceptance.checks"),
    ("target: kubernetes", "target: local", "dcforge:acceptance.schedule: a schedule runs in the cluster"),
])
def test_a_bad_schedule_is_one_line_naming_the_key(env_file, old, new, words):
    result = validate(env_file("dev", replace={old: new}))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_macros_are_accepted_as_kubernetes_takes_them(env_file):
    assert validate(env_file("dev", replace={'cron: "0 * * * *"': 'cron: "@hourly"'})).returncode == 0


def dev_objects() -> tuple[Environment, dict[str, dict]]:
    spec = load_environment("dev").spec
    return spec, {o["metadata"]["name"]: o for o in scheduled_acceptance(spec, "acceptance")}


def test_each_schedule_is_a_forbid_cronjob_with_limits_under_the_acceptance_account():
    spec, objects = dev_objects()
    hourly = objects["dcforge-accept-hourly"]
    assert hourly["kind"] == "CronJob" and hourly["metadata"]["namespace"] == "acceptance"
    cron = hourly["spec"]
    assert cron["schedule"] == "0 * * * *" and cron["concurrencyPolicy"] == "Forbid"
    assert cron["successfulJobsHistoryLimit"] == 3 and cron["failedJobsHistoryLimit"] == 3
    job = cron["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 1800 and job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == "dcforge-acceptance" and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == spec.acceptance.image
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert objects["dcforge-accept-weekly"]["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 10800


def test_the_cronjobs_command_is_one_the_cli_parses():
    import click
    import typer

    from dcforge.cli import app

    _, objects = dev_objects()
    command = objects["dcforge-accept-hourly"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "command"]
    assert command[:2] == ["dcforge", "accept"]
    assert {"--taint-failed", "--mark-nodes"} <= set(command)
    accept = typer.main.get_command(app).commands["accept"]
    with click.Context(accept) as ctx:
        params = accept.make_context("accept", command[2:], parent=ctx).params
    assert params["only"] == ["gpu_health"] and params["archive_reports"] == "acceptance/hourly"
    assert params["env_file"] == Path("/etc/dcforge/Pulumi.dev.yaml")


def test_the_environment_configmap_loads_back_to_the_same_spec(tmp_path):
    spec, objects = dev_objects()
    ((name, text),) = objects[ENVIRONMENT_CONFIGMAP]["data"].items()
    (tmp_path / name).write_text(text)
    assert load_environment(path=tmp_path / name).spec == spec


def test_the_runs_may_reach_the_pushgateway_port_only():
    _, objects = dev_objects()
    policy = objects["allow-to-pushgateway"]["spec"]
    assert policy["policyTypes"] == ["Egress"]
    assert policy["egress"] == [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9091}]}]


def test_no_schedule_no_objects():
    data = load_environment("dev").spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "schedule": []}
    assert scheduled_acceptance(Environment.model_validate(data), "acceptance") == []


# --- The last N reports as ConfigMaps, on the fake API ------------------------------------------------------------

def run_report(minute: int, extra: dict | None = None) -> dict:
    return {"status": "pass", "metadata": {"environment": "dev", "started_at": f"2026-03-01T10:{minute:02d}:00+00:00"},
            "checks": [{"name": "gpu_health", "status": "pass", "metrics": {}, "details": extra or {}}], "slos": []}


def test_the_last_reports_are_kept_and_the_older_deleted():
    pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")
    from dcforge.executors.kubernetes_access import REPORT_ARCHIVE_ACCESS, rbac_rules
    from dcforge.report.archive import SIZE_LIMIT, archive
    from tests.kube_fake import FakeCluster

    with FakeCluster() as cluster:
        cluster.grant("archiver", rbac_rules(REPORT_ARCHIVE_ACCESS))
        lines = [archive(run_report(minute), cluster.api_client("archiver"), "acceptance/hourly", keep=3)
                 for minute in range(5)]
        huge = run_report(9, {"nodes": [{"host": f"gpu-{i}", "log": "x" * 2000} for i in range(600)]})
        archive(huge, cluster.api_client("archiver"), "acceptance/hourly", keep=3)
        kept = {o["metadata"]["name"]: o for o in cluster.objects("acceptance") if o.get("kind") == "ConfigMap"}
    assert lines[-1] == "report kept in configmap acceptance/dcforge-report-hourly-20260301100400 (3 of schedule " \
                        "hourly kept)"
    assert sorted(kept) == ["dcforge-report-hourly-20260301100300", "dcforge-report-hourly-20260301100400",
                            "dcforge-report-hourly-20260301100900"]
    newest = kept["dcforge-report-hourly-20260301100900"]["data"]["report.json"]
    assert len(newest.encode()) <= SIZE_LIMIT
    report = json.loads(newest)
    assert report["archive_truncated"] == "plots and per-check details dropped to fit a ConfigMap"
    assert report["checks"][0]["status"] == "pass" and "details" not in report["checks"][0]


# --- The alerting rule in the stack ------------------------------------------------------------------------------

def test_the_prometheus_rule_is_declared_only_where_the_environment_enables_it(monkeypatch):
    from tests.pulumi_mocks import STACKS_DIR, run_stack_program, stack_config

    monkeypatch.syspath_prepend(str(STACKS_DIR))  # the program imports its `components` package, as Pulumi runs it

    loaded = load_environment("dev")
    config = {**loaded.raw_config, "monitoring": {"prometheusOperator": True, "acceptanceAlerts": True,
                                                  "selectorLabels": {"release": "kube-prometheus-stack"}}}
    resources = run_stack_program("dev", stack_config(config))
    (rule,) = [r for r in resources if r.type.endswith(":PrometheusRule")]
    assert rule.name == "acceptance/dcforge-acceptance"
    assert rule.inputs["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (alert,) = rule.inputs["spec"]["groups"][0]["rules"]
    assert alert["expr"] == 'dcforge_node_healthy{env="dev"} == 0'
    assert alert["for"] == f"{7 * 24 * 3600 + 10800}s"  # the weekly schedule's gap and time limit
    assert not [r for r in run_stack_program("dev", stack_config(loaded.raw_config))
                if r.type.endswith(":PrometheusRule")]


def test_alerts_without_the_operator_are_one_line(env_file):
    path = env_file("dev", text=(REPO / "stacks" / "Pulumi.dev.yaml").read_text()
                    + "  dcforge:monitoring:\n    acceptanceAlerts: true\n")
    result = validate(path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "dcforge:monitoring.acceptanceAlerts: acceptanceAlerts declares a PrometheusRule" in result.stderr

