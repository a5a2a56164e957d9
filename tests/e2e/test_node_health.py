"""Node health on a real Kubernetes cluster (the `cluster` environment): the DcforgeNodeHealthy condition, the
recommended-action annotation and the Events as the real API server takes them, the validation gate released,
each under exactly the roles the environment settings grant; and a scheduled run, started from its CronJob, keeping
its report in a ConfigMap. Skipped, with the reason, unless DCFORGE_E2E_KUBECONFIG names a cluster
(tests/e2e/conftest.py, README)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.e2e


def report_for(node: str, failed: bool) -> dict:
    row = {"host": node, "state": "failed" if failed else "succeeded", "reason": "e2e: a throttled node"}
    if failed:
        row["action"] = "reboot_node"
    return {"metadata": {"environment": "cluster", "started_at": "2026-01-01T00:00:00+00:00", "interrupted": False},
            "status": "fail" if failed else "pass", "slos": [],
            "checks": [{"name": "node_level", "status": "fail" if failed else "pass", "details": {"nodes": [row]}}]}


def wire(taint) -> dict:
    """A V1Taint as the API spells it (key, value, effect; no empty fields)."""
    return {k: v for k, v in {"key": taint.key, "value": taint.value, "effect": taint.effect}.items() if v}


@pytest.fixture
def node(admin):
    """The cluster's first node, its taints, annotations and our condition put back as they were afterwards."""
    from kubernetes import client

    from dcforge.node_health import ACTION_ANNOTATION, CONDITION

    core = client.CoreV1Api(admin)
    first = core.list_node().items[0]
    name, taints = first.metadata.name, [wire(t) for t in first.spec.taints or []]
    yield name
    core.patch_node(name, {"spec": {"taints": taints},
                           "metadata": {"annotations": {ACTION_ANNOTATION: None}}})
    core.patch_node_status(name, {"status": {"conditions": [{"type": CONDITION, "$patch": "delete"}]}})


def scoped_client(admin, spec, allow_taints: bool, allow_conditions: bool):
    """A client acting as the Acceptance ServiceAccount would with those settings: the admin impersonating it,
    the roles applied first."""
    import copy

    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    from dcforge.manifests.acceptance import acceptance
    from dcforge.manifests.common import ACCEPTANCE_SERVICE_ACCOUNT, acceptance_namespace
    from dcforge.spec.models import Environment

    data = spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "allowNodeTaints": allow_taints, "allowNodeConditions": allow_conditions}
    dynamic = DynamicClient(admin)
    for obj in acceptance(Environment.model_validate(data)).manifests:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).server_side_apply(
                body=obj, name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
                field_manager="dcforge-e2e", force_conflicts=True)
    configuration = copy.copy(admin.configuration)
    impersonating = client.ApiClient(configuration)
    user = f"system:serviceaccount:{acceptance_namespace(spec)}:{ACCEPTANCE_SERVICE_ACCOUNT}"
    impersonating.set_default_header("Impersonate-User", user)
    return impersonating


def test_a_failed_node_gets_condition_annotation_event_and_taint_and_loses_them_when_it_passes(deployed, spec,
                                                                                                admin, node):
    from kubernetes import client

    from dcforge.node_health import ACTION_ANNOTATION, CONDITION
    from dcforge.remediation import GATE_TAINT, TAINT, remediate

    core = client.CoreV1Api(admin)
    scoped = scoped_client(admin, spec, allow_taints=True, allow_conditions=True)
    failed = remediate(report_for(node, True), scoped, dry_run=False, taint=True, mark=True).to_dict()
    assert failed["errors"] == [] and failed["tainted"] == [node]
    live = core.read_node(node)
    condition = next(c for c in live.status.conditions if c.type == CONDITION)
    assert condition.status == "False" and condition.reason == "NodeLevelFailed"
    assert any(c.type == "Ready" for c in live.status.conditions)  # the kubelet's conditions are kept
    assert live.metadata.annotations[ACTION_ANNOTATION] == "reboot_node"
    assert TAINT in [wire(t) for t in live.spec.taints]
    events = core.list_namespaced_event("default", field_selector=f"involvedObject.name={node},reason=NodeLevelFailed")
    assert events.items and events.items[-1].type == "Warning"
    # gated again (a remediated node), then a passing run: released, condition True, annotation none
    core.patch_node(node, {"spec": {"taints": [*[wire(t) for t in live.spec.taints if t.key != TAINT["key"]],
                                               GATE_TAINT]}})
    passed = remediate(report_for(node, False), scoped, dry_run=False, taint=True, mark=True).to_dict()
    assert passed["errors"] == [] and passed["released"] == [node]
    live = core.read_node(node)
    condition = next(c for c in live.status.conditions if c.type == CONDITION)
    assert condition.status == "True" and condition.reason == "Released"
    assert live.metadata.annotations[ACTION_ANNOTATION] == "none"
    assert not [t for t in live.spec.taints or [] if t.key in (TAINT["key"], GATE_TAINT["key"])]


def test_without_allow_node_conditions_the_api_server_refuses_them(deployed, spec, admin, node):
    from dcforge.remediation import remediate

    scoped = scoped_client(admin, spec, allow_taints=False, allow_conditions=False)
    outcome = remediate(report_for(node, True), scoped, dry_run=False, taint=False, mark=True).to_dict()
    assert len(outcome["errors"]) == 1 and "allowNodeConditions" in outcome["errors"][0]


def test_a_scheduled_run_keeps_its_report_in_a_configmap(deployed, spec, admin, tmp_path):
    """The CronJob of a `system` schedule applied, one run started from it (as `kubectl create job --from`), its
    report read back from the ConfigMap it wrote."""
    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    from dcforge.manifests.common import acceptance_namespace
    from dcforge.manifests.scheduled_acceptance import scheduled_acceptance
    from dcforge.report.archive import KEY, SCHEDULE_LABEL
    from dcforge.spec.models import Environment

    namespace = acceptance_namespace(spec)
    data = spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "schedule": [{"name": "e2e", "cron": "0 0 1 1 *",
                                                               "checks": ["system"], "timeLimitS": 600}]}
    objects = scheduled_acceptance(Environment.model_validate(data), namespace)
    dynamic = DynamicClient(admin)
    for obj in objects:
        dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).server_side_apply(
            body=obj, name=obj["metadata"]["name"], namespace=namespace, field_manager="dcforge-e2e",
            force_conflicts=True)
    cron_job = next(o for o in objects if o["kind"] == "CronJob")
    batch, core = client.BatchV1Api(admin), client.CoreV1Api(admin)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "dcforge-accept-e2e-now",
                                                                   "namespace": namespace},
           "spec": cron_job["spec"]["jobTemplate"]["spec"]}
    batch.create_namespaced_job(namespace, job)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = batch.read_namespaced_job_status("dcforge-accept-e2e-now", namespace).status
            if status.succeeded or status.failed:
                break
            time.sleep(5)
        kept = core.list_namespaced_config_map(namespace, label_selector=f"{SCHEDULE_LABEL}=e2e").items
        assert kept, f"no report ConfigMap (job status {status})"
        report = json.loads(kept[-1].data[KEY])
        assert [c["name"] for c in report["checks"]] == ["system"]
    finally:
        batch.delete_namespaced_job("dcforge-accept-e2e-now", namespace, propagation_policy="Foreground")
        for config_map in core.list_namespaced_config_map(namespace, label_selector=f"{SCHEDULE_LABEL}=e2e").items:
            core.delete_namespaced_config_map(config_map.metadata.name, namespace)
        for obj in objects:
            if obj["kind"] == "CronJob":
                batch.delete_namespaced_cron_job(obj["metadata"]["name"], namespace)

