"""`dcforge synth`: files written per component, stale ones removed, bad specs refused before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcforge.errors import ConfigError, ConfigErrors
from dcforge.spec import load_environment
from dcforge.paths import REPO_ROOT
from dcforge.synth import synth_command, synthesize

PROD = REPO_ROOT / "stacks" / "Pulumi.prod.yaml"


def test_synth_writes_one_file_per_component_in_apply_order(tmp_path, capsys):
    out = tmp_path / "out"
    assert synth_command("prod", out) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00-ClusterNetwork-platform.yaml", "01-SecurityBaseline-platform.yaml",
                     "02-GpuOperator-platform.yaml", "03-DistributedStorage-platform.yaml",
                     "04-GpuNodePool-train-a.yaml", "05-GpuNodePool-train-b.yaml", "06-GpuNodePool-infer-l40s.yaml",
                     "07-Acceptance-acceptance.yaml", "apiserver-audit-policy.yaml"]
    names.remove("apiserver-audit-policy.yaml")  # a file for the API server, not a cluster object
    written = [doc for name in names for doc in yaml.safe_load_all((out / name).read_text())]
    assert written == [obj for chunk in synthesize(load_environment("prod").spec).values() for obj in chunk]
    storage = list(yaml.safe_load_all((out / "03-DistributedStorage-platform.yaml").read_text()))
    assert [d["kind"] for d in storage[:2]] == ["Namespace", "HelmRelease"]
    assert storage[1]["spec"]["chart"] == "rook-ceph"
    printed = capsys.readouterr().out
    assert "0 violations, 3 excepted" in printed and "0 invalid" in printed


def test_resynth_removes_stale_component_files_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "05-GpuNodePool-removed-pool.yaml").write_text("---\n")
    (out / "README.md").write_text("mine")
    assert synth_command("local", out) == 0
    assert not (out / "05-GpuNodePool-removed-pool.yaml").exists()
    assert (out / "README.md").read_text() == "mine"


def edited_prod(tmp_path: Path, edit) -> Path:
    document = yaml.safe_load(PROD.read_text())
    edit(document["config"])
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def overlapping_cidrs(config):
    config["dcforge:network"]["serviceCidr"] = "10.245.0.0/16"  # inside podCidr 10.244.0.0/14


def quota_above_capacity(config):
    config["dcforge:gpuPools"][2]["quota"] = {"gpus": 1000}  # infer-l40s has 16 x 8 = 128


def duplicate_namespaces(config):
    config["dcforge:network"]["namespaces"].append({"name": "training", "purpose": "training"})


def bad_taint(config):
    config["dcforge:gpuPools"][0]["taints"] = ["nvidia.com/gpu=present:Sometimes"]


def unknown_backend(config):
    config["dcforge:storage"]["backend"] = "glusterfs"


@pytest.mark.parametrize("edit, words", [
    (overlapping_cidrs, "overlaps podCidr"),
    (quota_above_capacity, "exceeds the pool's capacity"),
    (duplicate_namespaces, "duplicate name 'training'"),
    (bad_taint, "is not 'key=value:Effect'"),
    (unknown_backend, "rook-ceph"),
])
def test_bad_spec_fails_before_any_manifest_is_written(tmp_path, edit, words):
    out = tmp_path / "out"
    with pytest.raises((ConfigError, ConfigErrors)) as caught:
        synth_command("bad", out, env_file=edited_prod(tmp_path, edit))
    assert words in str(caught.value)
    assert not out.exists()


def test_cli_synth_exit_codes(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "dcforge.cli", "synth", *args], capture_output=True, text=True,
                              timeout=60, cwd=REPO_ROOT)

    ok = run("--env", "dev", "-o", str(tmp_path / "dev"))
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "dev").glob("*.yaml"))) == 7
    bad = run("--env-file", str(edited_prod(tmp_path, overlapping_cidrs)), "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "overlaps podCidr" in bad.stderr and not (tmp_path / "bad").exists()


def test_declared_audit_policy_is_written_and_covers_the_sensitive_requests(tmp_path, capsys):
    out = tmp_path / "out"
    assert synth_command("prod", out) == 0
    (policy,) = yaml.safe_load_all((out / "apiserver-audit-policy.yaml").read_text())
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy"
    levels = {(rule["level"], tuple(r for group in rule.get("resources", []) for r in group["resources"]))
              for rule in policy["rules"]}
    assert ("Metadata", ("secrets",)) in levels  # never Request/RequestResponse: that would log secret values
    assert ("Metadata", ("pods/exec", "pods/attach", "pods/portforward")) in levels
    rbac = next(rule for rule in policy["rules"] if rule.get("resources", [{}])[0].get("group") ==
                "rbac.authorization.k8s.io")
    assert rbac["level"] == "RequestResponse" and "clusterrolebindings" in rbac["resources"][0]["resources"]
    writes = next(rule for rule in policy["rules"] if "namespaces" in rule)
    assert writes["namespaces"] == ["acceptance"] and "delete" in writes["verbs"]
    assert policy["rules"][-1] == {"level": "None"}
    assert "no API-server audit policy" not in capsys.readouterr().out


def test_undeclared_audit_policy_is_a_note_and_a_stale_file_is_removed(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "apiserver-audit-policy.yaml").write_text("---\n")
    assert synth_command("local", out) == 0
    assert not (out / "apiserver-audit-policy.yaml").exists()
    assert "note: no API-server audit policy declared (dcforge:security.auditPolicy)" in capsys.readouterr().out
