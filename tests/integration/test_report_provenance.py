"""Report provenance end to end: a real `dcforge accept` signs its report; `dcforge report verify` recomputes every
digest and the signature and names what changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import STACKS

pytestmark = pytest.mark.slow


def dcforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def write_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory):
    """One signed acceptance run (system + compliance: artefact files in a nested folder), copied per test."""
    root = tmp_path_factory.mktemp("signed")
    private, public = write_key_pair(root, "signer")
    env_file = root / "Pulumi.local.yaml"
    env_file.write_text((STACKS / "Pulumi.local.yaml").read_text())
    proc = dcforge("accept", "--env-file", str(env_file), "--only", "system,compliance", "--sign-key", str(private),
                   cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (directory,) = (root / "reports" / "local").iterdir()
    key_bytes = private.read_bytes().decode()
    assert key_bytes.splitlines()[1] not in proc.stdout + proc.stderr  # the key is never printed
    return root, directory, public, env_file


def test_signed_report_verifies_and_lists_every_artefact(signed_run):
    root, directory, public, _ = signed_run
    report = json.loads((directory / "report.json").read_text())
    provenance = report["provenance"]
    assert "artefacts/compliance/findings.json" in provenance["artefacts"]
    assert any(p.startswith("artefacts/compliance/manifests/") for p in provenance["artefacts"])
    assert "dcforge/cli.py" in provenance["code"]["files"] and "workloads/train.py" in provenance["code"]["files"]
    assert len(provenance["env_file"]["sha256"]) == 64
    proc = dcforge("report", "verify", str(directory), "--public-key", str(public), cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "signature" in proc.stdout and "env file" in proc.stdout
    # re-rendering keeps working and does not disturb what verify checks
    assert dcforge("report", str(directory), cwd=root).returncode == 0
    assert dcforge("report", "verify", str(directory), cwd=root).returncode == 0


def copy_run(signed_run, tmp_path) -> Path:
    import shutil

    _, directory, _, _ = signed_run
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    return copy


def test_modified_and_missing_artefacts_are_named(signed_run, tmp_path):
    root, _, public, _ = signed_run
    copy = copy_run(signed_run, tmp_path)
    findings = copy / "artefacts/compliance/findings.json"
    findings.write_text(findings.read_text().replace('"violations"', '"violation"', 1))
    manifest = next((copy / "artefacts/compliance/manifests").iterdir())
    manifest.unlink()
    proc = dcforge("report", "verify", str(copy), "--public-key", str(public), cwd=root)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(line.startswith("artefact changed: artefacts/compliance/findings.json") for line in lines)
    assert f"artefact missing: artefacts/compliance/manifests/{manifest.name}" in lines
    assert len(lines) == 2, proc.stdout  # the signature still holds: report.json itself is untouched


def test_tampered_report_and_wrong_key_fail_the_signature(signed_run, tmp_path):
    root, _, public, _ = signed_run
    copy = copy_run(signed_run, tmp_path)
    _, other_public = write_key_pair(tmp_path, "other")
    proc = dcforge("report", "verify", str(copy), "--public-key", str(other_public), cwd=root)
    assert proc.returncode == 1 and proc.stdout.startswith("signature does not match")

    report = json.loads((copy / "report.json").read_text())
    report["status"] = "pass" if report["status"] != "pass" else "fail"
    (copy / "report.json").write_text(json.dumps(report, indent=2))
    proc = dcforge("report", "verify", str(copy), "--public-key", str(public), cwd=root)
    assert proc.returncode == 1 and "signature does not match" in proc.stdout

    (copy / "report.json.sig").unlink()
    proc = dcforge("report", "verify", str(copy), "--public-key", str(public), cwd=root)
    assert proc.returncode == 1 and "signature missing" in proc.stdout


def test_changed_env_file_is_named(signed_run, tmp_path):
    root, directory, _, env_file = signed_run
    original = env_file.read_text()
    try:
        env_file.write_text(original + "# edited after the run\n")
        proc = dcforge("report", "verify", str(directory), cwd=root)
        assert proc.returncode == 1 and proc.stdout.strip() == f"env file changed: {env_file}"
    finally:
        env_file.write_text(original)


def test_bad_input_is_exit_2(signed_run, tmp_path):
    root, directory, _, _ = signed_run
    proc = dcforge("report", "verify", str(tmp_path), cwd=root)
    assert proc.returncode == 2 and "no report.json" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    proc = dcforge("report", "verify", str(directory), "--public-key", str(tmp_path / "not-a-key.pem"), cwd=root)
    assert proc.returncode == 2 and "--public-key: expected an Ed25519 public key" in proc.stderr
    proc = dcforge("accept", "--only", "system", "--sign-key", str(tmp_path / "not-a-key.pem"), cwd=tmp_path)
    assert proc.returncode == 2 and "--sign-key" in proc.stderr and "hello" not in proc.stderr + proc.stdout
    assert not (tmp_path / "reports").exists()  # refused before any check ran
