"""`dcforge accept --taint-failed` against the fake Kubernetes API (kmock, tests/kube_fake.py): failed nodes tainted,
passing ones untainted, other taints kept, nothing changed twice, nothing at all in a dry run, no API access beyond
REMEDIATION_API_ACCESS (the ClusterRole `allowNodeTaints` adds), and the flags refused where they do not apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from dcforge.executors.kubernetes_access import REMEDIATION_API_ACCESS, rbac_rules  # noqa: E402
from dcforge.harness.check import CheckConfig  # noqa: E402
from dcforge.harness.result import CheckResult  # noqa: E402
from dcforge.remediation import TAINT, apply_to_report, node_verdicts, remediate  # noqa: E402
from dcforge.report.nodes import summary_line  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402

AGENT = "dcforge-remediation"
OTHER = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
REPO = Path(__file__).resolve().parents[2]


def report_with(rows_by_check: dict[str, list[dict]], interrupted: bool = False) -> dict:
    return {"metadata": {"environment": "k8s", "started_at": "2026-01-01T00:00:00Z", "interrupted": interrupted},
            "status": "fail", "slos": [], "summary": {"checks": {}, "slos": {}},
            "checks": [{"name": name, "status": "pass", "metrics": {}, "details": {"nodes": rows}}
                       for name, rows in rows_by_check.items()]}


# gpu-1 failed (Socket fallback), gpu-2 passed everywhere, gpu-3 was slow; gpu-4 has no rows at all.
REPORT = report_with({
    "allreduce_multinode": [{"host": "pod-a", "kubernetes_node": "gpu-1", "state": "succeeded",
                             "problem": "NCCL fell back to Socket"},
                            {"host": "pod-b", "kubernetes_node": "gpu-2", "state": "succeeded"}],
    "slow_node": [{"host": "gpu-2", "verdict": "cleared"}, {"host": "gpu-3", "verdict": "slow"}]})


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        from kubernetes import client

        core = client.CoreV1Api(fake.api_client("test-setup"))
        for name, taints in (("gpu-1", [OTHER]), ("gpu-2", [OTHER, TAINT]), ("gpu-3", []), ("gpu-4", [TAINT])):
            core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                              "spec": {"taints": taints}}, _preload_content=False)
        fake.grant(AGENT, rbac_rules(REMEDIATION_API_ACCESS))
        yield fake


def taints(cluster: FakeCluster) -> dict[str, list[dict]]:
    return {o["metadata"]["name"]: (o.get("spec") or {}).get("taints") or []
            for o in cluster.objects() if o.get("kind") == "Node"}


def patches(cluster: FakeCluster) -> int:
    return sum(1 for agent, verb, _, _ in cluster.api.requests_seen if agent == AGENT and verb == "patch")


def test_node_verdicts_from_every_checks_rows():
    verdicts = node_verdicts(REPORT)
    assert verdicts == {"gpu-1": ["allreduce_multinode: pod-a: NCCL fell back to Socket"], "gpu-2": [],
                        "gpu-3": ["slow_node: gpu-3: slow node"]}


def test_failed_nodes_are_tainted_passing_ones_untainted_others_kept(cluster):
    outcome = remediate(REPORT, cluster.api_client(AGENT), dry_run=False).to_dict()
    assert outcome["tainted"] == ["gpu-1", "gpu-3"] and outcome["untainted"] == ["gpu-2"]
    assert outcome["errors"] == [] and outcome["unchanged"] == []
    now = taints(cluster)
    assert now["gpu-1"] == [OTHER, TAINT] and now["gpu-2"] == [OTHER] and now["gpu-3"] == [TAINT]
    assert now["gpu-4"] == [TAINT]  # no rows: left alone
    # every request was one the ClusterRole grants (anything else would have been 403)
    assert {(g, r, v) for a, v, g, r in cluster.api.requests_seen if a == AGENT} <= \
        {(a.group, r, v) for a in REMEDIATION_API_ACCESS for r in a.resources for v in a.verbs}


def test_remediation_is_idempotent(cluster):
    remediate(REPORT, cluster.api_client(AGENT), dry_run=False)
    before, patched = taints(cluster), patches(cluster)
    again = remediate(REPORT, cluster.api_client(AGENT), dry_run=False).to_dict()
    assert again["unchanged"] == ["gpu-1", "gpu-2", "gpu-3"] and not again["tainted"] and not again["untainted"]
    assert taints(cluster) == before and patches(cluster) == patched


def test_dry_run_says_what_it_would_do_and_changes_nothing(cluster):
    before = taints(cluster)
    outcome = remediate(REPORT, cluster.api_client(AGENT), dry_run=True).to_dict()
    assert outcome["tainted"] == ["gpu-1", "gpu-3"] and outcome["untainted"] == ["gpu-2"]
    assert taints(cluster) == before and patches(cluster) == 0
    assert summary_line(outcome) == ("remediation (dry run) [dcforge.io/acceptance=failed:NoSchedule]: "
                                     "would taint gpu-1, gpu-3; would untaint gpu-2")


def test_missing_node_and_missing_rights_are_one_line_per_node(cluster):
    cluster.grant("no-rights", [])
    denied = remediate(REPORT, cluster.api_client("no-rights"), dry_run=False).to_dict()
    assert len(denied["errors"]) == 3 and "allowNodeTaints" in denied["errors"][0]
    ghost = remediate(report_with({"c": [{"host": "gpu-9", "state": "failed"}]}), cluster.api_client(AGENT), False)
    assert ghost.to_dict()["errors"] == ["node gpu-9: no such Kubernetes node (HTTP 404)"]


def test_an_interrupted_run_taints_nothing(cluster):
    outcome = remediate(report_with({"c": [{"host": "gpu-1", "state": "running"}]}, interrupted=True),
                        cluster.api_client(AGENT), dry_run=False).to_dict()
    assert outcome["skipped"].startswith("the run was interrupted") and patches(cluster) == 0


def test_the_report_files_carry_the_remediation(cluster, tmp_path):
    report = json.loads(json.dumps(REPORT))
    field = apply_to_report(tmp_path, report, dry_run=False, api_client=cluster.api_client(AGENT))
    written = json.loads((tmp_path / "report.json").read_text())["remediation"]
    assert written == field and written["tainted"] == ["gpu-1", "gpu-3"]
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Remediation</h2>" in page and "taint gpu-1, gpu-3; untaint gpu-2" in page


def run_accept(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "local", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "DCFORGE_STACKS_DIR": str(REPO / "stacks")})


def test_flags_where_they_do_not_apply_are_one_line_and_exit_2():
    wrong_target = run_accept("--taint-failed")
    assert wrong_target.returncode == 2
    assert wrong_target.stderr.strip() == ("error: --taint-failed: dcforge:acceptance.target is local; node taints "
                                           "apply only to target kubernetes")
    alone = run_accept("--dry-run")
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1 and "--dry-run belongs to --taint-failed" in \
        alone.stderr


def test_the_node_tainter_cluster_role_exists_only_where_the_environment_allows_it():
    from dcforge.manifests.acceptance import acceptance
    from dcforge.spec import load_environment
    from dcforge.spec.models import Environment

    data = load_environment("dev").spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "allowNodeTaints": False}
    default = [m for m in acceptance(Environment.model_validate(data)).manifests if "node-tainter" in
               m["metadata"]["name"]]
    assert default == []
    data["acceptance"] = {**data["acceptance"], "allowNodeTaints": True}
    role, bound = [m for m in acceptance(Environment.model_validate(data)).manifests
                   if "node-tainter" in m["metadata"]["name"]]
    assert role["kind"] == "ClusterRole" and role["rules"] == rbac_rules(REMEDIATION_API_ACCESS)
    assert bound["kind"] == "ClusterRoleBinding" and bound["roleRef"]["name"] == role["metadata"]["name"]


def test_flags_are_accepted_on_the_kubernetes_target():
    from dcforge.errors import DcforgeError
    from dcforge.remediation import check_flags
    from dcforge.spec import load_environment
    from dcforge.spec.models import Environment

    data = load_environment("dev").spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "target": "kubernetes", "image": "registry.example/dcforge:0.1.0"}
    kubernetes = Environment.model_validate(data)
    check_flags(kubernetes, taint_failed=True, dry_run=True)
    check_flags(kubernetes, taint_failed=False, dry_run=False)
    with pytest.raises(DcforgeError, match="--dry-run belongs to --taint-failed"):
        check_flags(kubernetes, taint_failed=False, dry_run=True)


class NodeRowsCheck:
    """Reports the per-node rows of REPORT's all-reduce check, as a multi-node check on the cluster would."""

    name = "noderows"
    description = "Per-node rows for the remediation test."
    metrics = ()
    requires_declared_gpus = False
    Config = CheckConfig

    def run(self, ctx, config):
        result = CheckResult(self.name)
        result.details["nodes"] = REPORT["checks"][0]["details"]["nodes"]
        return result


def noderows_on_the_fake(cluster, tmp_path, monkeypatch):
    """An environment file of target kubernetes running NodeRowsCheck, and $KUBECONFIG naming the fake API."""
    import yaml

    from dcforge import checks

    monkeypatch.setattr(checks, "CHECKS", {**checks.CHECKS, "noderows": "tests.unit.test_remediation:NodeRowsCheck"})
    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    document["config"]["dcforge:acceptance"] = {"checks": ["noderows"], "target": "kubernetes",
                                                "image": "registry.example/dcforge:0.1.0"}
    env_file = tmp_path / "Pulumi.kube.yaml"
    env_file.write_text(yaml.safe_dump(document))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake", "users": [{"name": "u", "user": {}}],
        "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # what a fresh `dcforge` process reads, once, on import:
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    return env_file


def test_accept_taint_failed_end_to_end_on_the_kubernetes_target(cluster, tmp_path, monkeypatch):
    """`dcforge accept --taint-failed`, the client from $KUBECONFIG: the report and the cluster agree."""
    from typer.testing import CliRunner

    from dcforge.cli import app

    env_file = noderows_on_the_fake(cluster, tmp_path, monkeypatch)
    args = ["accept", "--env-file", str(env_file), "--taint-failed"]
    dry = CliRunner().invoke(app, [*args, "--reports", str(tmp_path / "reports" / "1"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would taint gpu-1; would untaint gpu-2" in dry.output and taints(cluster)["gpu-1"] == [OTHER]
    wet = CliRunner().invoke(app, [*args, "--reports", str(tmp_path / "reports" / "2")])
    assert wet.exit_code == 0, wet.output
    assert "remediation [dcforge.io/acceptance=failed:NoSchedule]: taint gpu-1; untaint gpu-2" in wet.output
    assert taints(cluster)["gpu-1"] == [OTHER, TAINT] and taints(cluster)["gpu-2"] == [OTHER]
    reports = sorted((tmp_path / "reports").glob("*/*/*/report.json"))
    assert [json.loads(p.read_text())["remediation"]["dry_run"] for p in reports] == [True, False]


def test_a_node_that_needs_a_gpu_reset_is_as_failed_as_one_that_needs_service():
    report = report_with({"node_level": [{"host": "gpu-1", "state": "succeeded", "action": "reset_gpu"},
                                         {"host": "gpu-2", "state": "succeeded", "action": "restart_workload"}]})
    assert node_verdicts(report) == {"gpu-1": ["node_level: gpu-1: action: reset GPU"], "gpu-2": []}
