"""Golden snapshots of the synthesized manifests per environment, and schema validation of every object.

A change to any builder shows up here as a unified diff. When the change is intended, regenerate with
`DCFORGE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_synth_golden.py` and commit the new files.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from dcforge.compliance import evaluate, exceptions_for, unexcepted
from dcforge.spec import load_environment
from dcforge.synth import render_yaml, schema_validate, synthesize, verify_environment

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("DCFORGE_UPDATE_GOLDEN") == "1"
ENVIRONMENTS = ("local", "dev", "prod", "cluster")
MAX_DIFF_LINES = 200


def snapshot(env: str) -> str:
    files = synthesize(load_environment(env).spec)
    return "".join(f"# ==== {name}\n{render_yaml(objects)}" for name, objects in files.items())


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_synthesized_manifests_match_golden(env):
    golden = GOLDEN_DIR / f"synth-{env}.yaml"
    current = snapshot(env)
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(current)
        return
    assert golden.exists(), f"{golden} is missing; create it with DCFORGE_UPDATE_GOLDEN=1"
    expected = golden.read_text()
    if current != expected:
        diff = list(difflib.unified_diff(expected.splitlines(), current.splitlines(),
                                         f"golden/{golden.name}", f"synth {env} (now)", lineterm=""))
        shown = "\n".join(diff[:MAX_DIFF_LINES])
        more = f"\n... {len(diff) - MAX_DIFF_LINES} more diff lines" if len(diff) > MAX_DIFF_LINES else ""
        pytest.fail(f"synthesized manifests of {env!r} differ from {golden.name} "
                    f"(DCFORGE_UPDATE_GOLDEN=1 to accept):\n{shown}{more}")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_synthesized_object_is_schema_valid_or_an_accounted_custom_resource(env):
    spec = load_environment(env).spec
    verification = verify_environment(spec)
    schema = verification.schema
    assert schema.errors == []
    assert schema.validated > 40
    # only custom resources and Helm pseudo-manifests lack a bundled schema
    assert set(schema.skipped) <= {"HelmRelease", "ResourceFlavor", "ClusterQueue", "LocalQueue", "CephCluster",
                                   "CephBlockPool", "CephFilesystem", "ClusterIssuer", "Certificate",
                                   "NetworkAttachmentDefinition", "NicClusterPolicy"}
    assert verification.ok


def test_prod_has_zero_violations_outside_the_listed_exceptions():
    spec = load_environment("prod").spec
    objects = [obj for chunk in synthesize(spec).values() for obj in chunk]
    violations = evaluate(objects, exceptions_for(spec))
    assert unexcepted(violations) == []
    # what is excepted is exactly the privileged platform namespaces, each by its own exception
    assert sorted((v.resource, v.exception) for v in violations) == [
        ("Namespace/gpu-operator", "EXC-GPU-OPERATOR"),
        ("Namespace/nvidia-network-operator", "EXC-NETWORK-OPERATOR"),
        ("Namespace/rook-ceph", "EXC-STORAGE-DAEMONS"),
    ]


def test_schema_validation_rejects_a_broken_object():
    spec = load_environment("dev").spec
    broken = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a", "namespace": "x"},
         "automountServiceAccountToken": "no"},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
         "spec": {"podSelector": {}, "policyType": ["Ingress"]}},  # typo: strict mode refuses unknown fields
        {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ClusterQueue", "metadata": {"name": "q"}, "spec": {}},
    ]
    report = schema_validate(broken, spec.versions.kubernetes)
    assert [(e.resource, e.path) for e in report.errors] == [("ServiceAccount/x/a", "automountServiceAccountToken"),
                                                             ("NetworkPolicy/x/p", "spec")]
    assert report.validated == 0 and dict(report.skipped) == {"ClusterQueue": 1}
