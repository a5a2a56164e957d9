"""The `compliance` acceptance check: metrics, artefacts, and failing on a non-compliant environment."""

from __future__ import annotations

import json
import time

import yaml

from dcforge.checks import CHECKS
from dcforge.checks.compliance import ComplianceCheck, ComplianceConfig
from dcforge.harness.check import CheckContext
from dcforge.harness.result import Status
from dcforge.spec import load_environment
from dcforge.paths import REPO_ROOT


def run(loaded, tmp_path, **settings):
    ctx = CheckContext(env=loaded, report_dir=tmp_path, deadline=time.monotonic() + 60, log=lambda line: None)
    return ComplianceCheck().run(ctx, ComplianceConfig(**settings))


def test_registered_and_listed_in_every_environment():
    assert CHECKS["compliance"] == "dcforge.checks.compliance:ComplianceCheck"
    for env in ("local", "dev", "prod"):
        acceptance = load_environment(env).spec.acceptance
        assert "compliance" in acceptance.checks and acceptance.slos["compliance.violations"] == "== 0"


def test_prod_passes_with_exceptions_listed(tmp_path):
    result = run(load_environment("prod"), tmp_path)
    assert result.status == Status.PASS, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert metrics["violations"] == 0 and metrics["schema_errors"] == 0
    assert metrics["excepted"] == 3 and metrics["rules"] >= 25 and metrics["objects"] > 100
    findings = json.loads((tmp_path / result.artefacts["findings"]).read_text())
    assert {e["id"] for e in findings["exceptions"]} >= {"EXC-GPU-OPERATOR", "EXC-RDMA-IPC-LOCK"}
    assert all(v["excepted"] for v in findings["violations"])
    assert len(list((tmp_path / result.artefacts["manifests"]).glob("*.yaml"))) == 9  # 8 components + audit policy
    assert any("EXC-RDMA-IPC-LOCK" in line for line in result.details["exceptions"])


def test_unencrypted_storage_and_privileged_namespace_fail(tmp_path):
    document = yaml.safe_load((REPO_ROOT / "stacks" / "Pulumi.prod.yaml").read_text())
    config = document["config"]
    config["dcforge:storage"]["classes"][1]["encrypted"] = False
    config["dcforge:network"]["namespaces"][1]["podSecurity"] = "privileged"
    path = tmp_path / "Pulumi.weak.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    loaded = load_environment(path=path)
    result = run(loaded, tmp_path / "report")
    assert result.status == Status.FAIL
    assert result.metrics["violations"].value == 2
    assert result.metrics["violations_high"].value == 1 and result.metrics["violations_medium"].value == 1
    assert "DCF-NS-001 Namespace/inference" in result.reason or "DCF-STO-001" in result.reason
    # every violating object is named with its rule, not only counted per rule
    violating = result.details["violating_objects"]
    assert len(violating) == 2
    assert any(line.startswith("DCF-NS-001 Namespace/inference: ") for line in violating)
    assert any(line.startswith("DCF-STO-001 StorageClass/") for line in violating)
    advisory = run(loaded, tmp_path / "advisory", fail_on_severity="never", write_manifests=False)
    assert advisory.status == Status.PASS and advisory.metrics["violations"].value == 2
    assert "manifests" not in advisory.artefacts


def fake_kubectl(tmp_path, items: list[dict]):
    """A stand-in for kubectl (no cluster here): prints a List for core kinds, fails for CRDs not installed, and
    writes a warning on stderr as the real one does, which must not end up in the JSON."""
    listing = tmp_path / "listing.json"
    listing.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    script = tmp_path / "kubectl"
    script.write_text("#!/bin/sh\n"
                      "echo 'Warning: fake kubectl' >&2\n"
                      "case \"$2\" in *cephclusters*) echo 'error: the server doesnt have a resource type' >&2; "
                      "exit 1;; esac\n"
                      f"cat '{listing}'\n")
    script.chmod(0o755)
    return script


def test_cluster_source_judges_live_objects_in_dcforge_scope(tmp_path):
    managed = {"app.kubernetes.io/managed-by": "dcforge"}
    privileged_pod = {"containers": [{"name": "c", "image": "x:1", "securityContext": {"privileged": True}}]}
    items = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "inference", "labels": {
            **managed, "pod-security.kubernetes.io/enforce": "restricted"}}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "default-deny-all", "namespace": "inference"},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad", "namespace": "inference"},
         "spec": {"replicas": 2, "template": {"spec": privileged_pod}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-1", "namespace": "inference",
                                                        "ownerReferences": [{"kind": "ReplicaSet"}]},
         "spec": privileged_pod},
        # not dcforge's: kube-system and the API server's own roles
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd", "namespace": "kube-system"},
         "spec": {"hostNetwork": True, "containers": [{"name": "etcd", "image": "etcd"}]}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cluster-admin"},
         "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
    ]
    result = run(load_environment("dev"), tmp_path / "report", source="cluster",
                 kubectl=str(fake_kubectl(tmp_path, items)))
    assert result.details["source"] == "cluster"
    assert result.metrics["objects"].value == 3  # namespace, policy, deployment; the owned pod is judged via it
    findings = json.loads((tmp_path / "report" / result.artefacts["findings"]).read_text())
    resources = {v["resource"] for v in findings["violations"]}
    assert resources == {"Deployment/inference/bad"}
    assert result.status == Status.FAIL and "DCF-POD-001" in result.reason
    assert result.metrics["schema_errors"].value == 0  # the schema is still checked on the synthesized manifests


def test_cluster_source_without_kubectl_is_a_clear_error(tmp_path):
    import pytest

    from dcforge.compliance.live import KubectlError

    with pytest.raises(KubectlError, match="not found on PATH"):
        run(load_environment("dev"), tmp_path, source="cluster", kubectl="no-such-kubectl-here")


def test_missing_audit_policy_is_informational_not_a_violation(tmp_path):
    local = run(load_environment("local"), tmp_path / "local")
    assert local.status == Status.PASS and local.metrics["violations"].value == 0
    (note,) = local.details["informational"]
    assert note.startswith("no API-server audit policy declared (dcforge:security.auditPolicy)")
    findings = json.loads((tmp_path / "local" / local.artefacts["findings"]).read_text())
    assert findings["informational"] == [note]

    prod = run(load_environment("prod"), tmp_path / "prod")
    assert prod.details["informational"] == []
    assert (tmp_path / "prod" / prod.artefacts["manifests"] / "apiserver-audit-policy.yaml").is_file()
