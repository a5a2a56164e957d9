"""`dcforge accept --mark-nodes` and the validation gate against the fake Kubernetes API (kmock, tests/kube_fake.py):
the DcforgeNodeHealthy condition (set, kept beside the kubelet's, flipped with a new transition time), the
recommended-action annotation (the row's own action, else drain_and_service / none), one Event per failed check,
gated nodes released or quarantined, nothing changed in a dry run, and no API access beyond what
allowNodeConditions / allowNodeTaints grant."""

from __future__ import annotations

import json

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from dcforge.executors.kubernetes_access import (NODE_EVENT_ACCESS, NODE_HEALTH_API_ACCESS,  # noqa: E402
                                                 REMEDIATION_API_ACCESS, rbac_rules)
from dcforge.node_health import ACTION_ANNOTATION, CONDITION, condition_for  # noqa: E402
from dcforge.remediation import GATE_TAINT, TAINT, remediate  # noqa: E402
from dcforge.report.nodes import summary_line  # noqa: E402
from dcforge.report.nodes import judge_nodes  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402
from tests.unit.test_remediation import report_with  # noqa: E402

AGENT = "dcforge-marker"
# gpu-1: a GPU finding with its own action; gpu-2: passed; gpu-3: slow (no action: drain_and_service); gpu-4 and
# gpu-5: gated new nodes, gpu-4 passes, gpu-5 fails.
REPORT = report_with({
    "gpu_health": [{"host": "gpu-1", "state": "failed", "reason": "XID 79", "action": "reset_gpu"},
                   {"host": "gpu-2", "state": "succeeded", "action": "none"},
                   {"host": "gpu-4", "state": "succeeded"}, {"host": "gpu-5", "state": "failed", "reason": "XID 48",
                                                             "action": "not-an-action"}],
    "slow_node": [{"host": "gpu-2", "verdict": "cleared"}, {"host": "gpu-3", "verdict": "slow"},
                  {"host": "gpu-1", "verdict": "slow"}]})
READY = {"type": "Ready", "status": "True", "reason": "KubeletReady"}


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        from kubernetes import client

        core = client.CoreV1Api(fake.api_client("test-setup"))
        for name in ("gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5"):
            taints = [GATE_TAINT] if name in ("gpu-4", "gpu-5") else []
            core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                              "spec": {"taints": taints}, "status": {"conditions": [READY]}}, _preload_content=False)
        fake.grant(AGENT, rbac_rules(NODE_HEALTH_API_ACCESS + NODE_EVENT_ACCESS + REMEDIATION_API_ACCESS))
        yield fake


def nodes(cluster: FakeCluster) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in cluster.objects() if o.get("kind") == "Node"}


def condition(node: dict) -> dict:
    return next(c for c in node["status"]["conditions"] if c["type"] == CONDITION)


def events(cluster: FakeCluster) -> list[dict]:
    return [o for o in cluster.objects("default") if o.get("kind") == "Event"]


def test_a_nodes_action_is_its_rows_most_urgent_else_drain_and_service_or_none():
    judged = judge_nodes(REPORT)
    assert judged["gpu-1"].action.value == "drain_and_service"  # reset_gpu and the slow row's fallback
    assert judged["gpu-2"].action.value == "none" and judged["gpu-3"].action.value == "drain_and_service"
    assert judged["gpu-5"].action.value == "drain_and_service"  # a word outside the closed list is no action
    assert judged["gpu-1"].checks == {"gpu_health": False, "slow_node": False}
    only_gpu = judge_nodes(report_with({"gpu_health": REPORT["checks"][0]["details"]["nodes"][:1]}))
    assert only_gpu["gpu-1"].action.value == "reset_gpu"


def test_conditions_annotations_and_events_are_set_beside_the_kubelets(cluster):
    outcome = remediate(REPORT, cluster.api_client(AGENT), dry_run=False, taint=False, mark=True).to_dict()
    assert outcome["errors"] == [] and len(outcome["marks"]) == 5
    now = nodes(cluster)
    failed = condition(now["gpu-1"])
    assert failed["status"] == "False" and failed["reason"] == "GpuHealthFailed"
    assert failed["message"].startswith("recommended action drain_and_service: gpu_health: gpu-1: failed: XID 79")
    assert "\n" not in failed["message"] and failed["lastTransitionTime"] and failed["lastHeartbeatTime"]
    assert READY in now["gpu-1"]["status"]["conditions"]  # the kubelet's condition is kept
    assert condition(now["gpu-2"])["status"] == "True" and condition(now["gpu-2"])["reason"] == "AllChecksPassed"
    assert now["gpu-2"]["metadata"]["annotations"][ACTION_ANNOTATION] == "none"
    assert now["gpu-3"]["metadata"]["annotations"][ACTION_ANNOTATION] == "drain_and_service"
    # one Warning Event per failed check: gpu-1 failed two, gpu-3 and gpu-5 one each
    seen = sorted((e["involvedObject"]["name"], e["reason"]) for e in events(cluster))
    assert seen == [("gpu-1", "GpuHealthFailed"), ("gpu-1", "SlowNodeFailed"), ("gpu-3", "SlowNodeFailed"),
                    ("gpu-5", "GpuHealthFailed")]
    assert all(e["type"] == "Warning" and e["involvedObject"]["kind"] == "Node" for e in events(cluster))
    # every request is one the node-marker roles grant (anything else would have been 403)
    granted = {(a.group, r, v) for a in NODE_HEALTH_API_ACCESS + NODE_EVENT_ACCESS for r in a.resources
               for v in a.verbs}
    assert {(g, r, v) for a, v, g, r in cluster.api.requests_seen if a == AGENT} <= granted


def test_a_condition_keeps_its_transition_time_until_the_status_flips(cluster):
    remediate(REPORT, cluster.api_client(AGENT), dry_run=False, taint=False, mark=True)
    first = condition(nodes(cluster)["gpu-3"])
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client("test-setup"))
    stale = {**first, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    core.patch_node_status("gpu-3", {"status": {"conditions": [stale]}}, _preload_content=False)
    remediate(REPORT, cluster.api_client(AGENT), dry_run=False, taint=False, mark=True)
    assert condition(nodes(cluster)["gpu-3"])["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # still failed
    passing = report_with({"slow_node": [{"host": "gpu-3", "verdict": "cleared"}]})
    remediate(passing, cluster.api_client(AGENT), dry_run=False, taint=False, mark=True)
    cleared = condition(nodes(cluster)["gpu-3"])
    assert cleared["status"] == "True" and cleared["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert nodes(cluster)["gpu-3"]["metadata"]["annotations"][ACTION_ANNOTATION] == "none"


def test_gated_nodes_are_released_when_they_pass_and_quarantined_when_not(cluster):
    outcome = remediate(REPORT, cluster.api_client(AGENT), dry_run=False, taint=True, mark=True).to_dict()
    assert outcome["released"] == ["gpu-4"] and outcome["tainted"] == ["gpu-1", "gpu-3", "gpu-5"]
    now = nodes(cluster)
    assert now["gpu-4"]["spec"]["taints"] == [] and now["gpu-5"]["spec"]["taints"] == [TAINT]
    released = condition(now["gpu-4"])
    assert released["reason"] == "Released" and "dcforge.io/validation=pending:NoSchedule" in released["message"]
    assert "release gpu-4" in summary_line(outcome)
    again = remediate(REPORT, cluster.api_client(AGENT), dry_run=False, taint=True).to_dict()
    assert again["released"] == [] and again["unchanged"] == ["gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5"]


def test_dry_run_prints_the_conditions_and_changes_nothing(cluster):
    before = json.dumps(nodes(cluster), sort_keys=True)
    outcome = remediate(REPORT, cluster.api_client(AGENT), dry_run=True, taint=True, mark=True).to_dict()
    assert json.dumps(nodes(cluster), sort_keys=True) == before and events(cluster) == []
    assert not [r for r in cluster.api.requests_seen if r[0] == AGENT and r[1] in ("patch", "create")]
    line = next(m for m in outcome["marks"] if " gpu-1:" in m)
    assert line.startswith("would set DcforgeNodeHealthy=False (GpuHealthFailed) on gpu-1: recommended action")
    assert line.endswith("dcforge.io/recommended-action=drain_and_service; 2 event(s)")
    assert outcome["released"] == ["gpu-4"] and "would release gpu-4" in summary_line(outcome)


def test_without_the_operator_roles_each_node_is_one_line_naming_the_setting(cluster):
    cluster.grant("taints-only", rbac_rules(REMEDIATION_API_ACCESS))
    outcome = remediate(REPORT, cluster.api_client("taints-only"), dry_run=False, taint=False, mark=True).to_dict()
    assert len(outcome["errors"]) == 5 and all("allowNodeConditions" in e for e in outcome["errors"])
    assert all(CONDITION not in json.dumps(n["status"]) for n in nodes(cluster).values())


def test_the_condition_of_a_passed_node_names_its_checks():
    judged = judge_nodes(REPORT)["gpu-2"]
    assert condition_for(judged) == {"type": CONDITION, "status": "True", "reason": "AllChecksPassed",
                                     "message": "passed gpu_health, slow_node"}


def test_the_node_marker_roles_exist_only_where_the_environment_allows_them():
    from dcforge.manifests.acceptance import acceptance
    from dcforge.spec import load_environment
    from dcforge.spec.models import Environment

    data = load_environment("dev").spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "allowNodeConditions": False}
    assert not [m for m in acceptance(Environment.model_validate(data)).manifests
                if "node-marker" in m["metadata"]["name"]]
    data["acceptance"] = {**data["acceptance"], "allowNodeConditions": True}
    marker = [m for m in acceptance(Environment.model_validate(data)).manifests
              if "node-marker" in m["metadata"]["name"]]
    by_kind = {m["kind"]: m for m in marker}
    assert by_kind["ClusterRole"]["rules"] == rbac_rules(NODE_HEALTH_API_ACCESS)
    assert by_kind["Role"]["metadata"]["namespace"] == "default" and by_kind["Role"]["rules"] == \
        rbac_rules(NODE_EVENT_ACCESS)
    assert by_kind["RoleBinding"]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                 "name": by_kind["Role"]["metadata"]["name"]}


def test_accept_mark_nodes_end_to_end_on_the_kubernetes_target(cluster, tmp_path, monkeypatch):
    """`dcforge accept --mark-nodes` from $KUBECONFIG: dry, it prints the conditions and changes
    nothing; then the report, the node conditions and the HTML page agree."""
    from typer.testing import CliRunner

    from dcforge.cli import app
    from tests.unit.test_remediation import noderows_on_the_fake

    env_file = noderows_on_the_fake(cluster, tmp_path, monkeypatch)
    args = ["accept", "--env-file", str(env_file), "--mark-nodes"]
    dry = CliRunner().invoke(app, [*args, "--reports", str(tmp_path / "r1"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would mark 2 node(s)" in dry.output
    assert ("would set DcforgeNodeHealthy=False (NoderowsFailed) on gpu-1: recommended action drain_and_service: "
            "noderows: pod-a: NCCL fell back to Socket; dcforge.io/recommended-action=drain_and_service; 1 event(s)"
            in dry.output)
    assert all(CONDITION not in json.dumps(n["status"]) for n in nodes(cluster).values())
    wet = CliRunner().invoke(app, [*args, "--reports", str(tmp_path / "r2")])
    assert wet.exit_code == 0, wet.output
    assert "set DcforgeNodeHealthy=True (AllChecksPassed) on gpu-2: passed noderows" in wet.output
    assert condition(nodes(cluster)["gpu-1"])["reason"] == "NoderowsFailed"
    (page,) = (tmp_path / "r2").glob("*/*/report.html")
    assert "set DcforgeNodeHealthy=False (NoderowsFailed) on gpu-1" in page.read_text()


def test_a_rows_findings_give_its_action_when_it_names_none():
    rows = [{"host": "gpu-1", "state": "failed", "findings": [{"severity": "warn", "action": "check_fabric"},
                                                              {"severity": "fail", "action": "contact_vendor"}]},
            {"host": "gpu-2", "state": "succeeded", "findings": [{"severity": "info", "action": "bogus"}]}]
    judged = judge_nodes(report_with({"gpu_health": rows}))
    assert judged["gpu-1"].action.value == "contact_vendor" and judged["gpu-2"].action.value == "none"
