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
from dcforge.spec.loader import REPO_ROOT


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
    assert len(list((tmp_path / result.artefacts["manifests"]).glob("*.yaml"))) == 8
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
    advisory = run(loaded, tmp_path / "advisory", fail_on_severity="never", write_manifests=False)
    assert advisory.status == Status.PASS and advisory.metrics["violations"].value == 2
    assert "manifests" not in advisory.artefacts
