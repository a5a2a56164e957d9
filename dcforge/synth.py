"""`dcforge synth`: every manifest of an environment as YAML files, schema-validated and compliance-checked.

The output is usable for GitOps: one multi-document file per component, in the order the components depend on
each other (`00-ClusterNetwork-platform.yaml`, ...). Helm releases are written as `HelmRelease` pseudo-manifests
(chart, version, repository, values) because chart contents cannot be expanded offline.

Schema validation uses the Kubernetes OpenAPI schemas bundled with kubernetes-validate for the environment's
`versions.kubernetes`, in strict mode (unknown fields are errors). Custom resources (Kueue, Rook-Ceph,
cert-manager, NetworkAttachmentDefinition, NicClusterPolicy) have no bundled schema and are counted as skipped.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dcforge.compliance import Violation, evaluate, exceptions_for, unexcepted
from dcforge.compliance import resource_id as object_id
from dcforge.errors import DcforgeError
from dcforge.manifests import HELM_RELEASE_API_VERSION, ComponentManifests, build_all
from dcforge.spec.models import Environment

# Files synth owns in its output directory: rewritten on every run, stale ones (a removed pool) deleted.
SYNTH_FILE = re.compile(r"^\d{2}-[A-Za-z]+-[a-z0-9-]+\.yaml$")


@dataclass(frozen=True)
class SchemaError:
    resource: str
    path: str
    """Dotted path of the offending field inside the object."""
    message: str


@dataclass
class SchemaReport:
    kubernetes_version: str
    validated: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Kinds without a bundled schema (custom resources, HelmRelease pseudo-manifests) and how many of each."""
    errors: list[SchemaError] = field(default_factory=list)


@dataclass
class Verification:
    """Schema and compliance verdicts over one environment's synthesized manifests."""

    schema: SchemaReport
    violations: list[Violation]
    """Every violation, excepted ones included (marked)."""

    @property
    def failures(self) -> list[Violation]:
        return unexcepted(self.violations)

    @property
    def ok(self) -> bool:
        return not self.schema.errors and not self.failures

    def lines(self) -> list[str]:
        """Human-readable problems, one per line (what `dcforge validate` and `synth` print)."""
        out = [f"schema: {e.resource}: {e.path or '<root>'}: {e.message}" for e in self.schema.errors]
        out += [f"compliance {v.rule_id}: {v.resource}: {v.message}" for v in self.failures]
        return out


def component_file_name(index: int, component: ComponentManifests) -> str:
    return f"{index:02d}-{component.component}-{component.name}.yaml"


def render_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in declaration order (apiVersion, kind, metadata first), stable across runs."""
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)
                   for obj in objects)


def synthesize(spec: Environment) -> dict[str, list[dict[str, Any]]]:
    """File name -> objects of that file, in apply order."""
    return {component_file_name(i, c): c.all_objects() for i, c in enumerate(build_all(spec))}


def write_files(files: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.is_file() and SYNTH_FILE.match(stale.name) and stale.name not in files:
            stale.unlink()
    written = []
    for name, objects in files.items():
        path = out_dir / name
        path.write_text(render_yaml(objects))
        written.append(path)
    return written


@functools.lru_cache(maxsize=4)
def _schema_registry(schema_dir: str) -> Any:
    """The shared definitions of one Kubernetes version, loaded once (1.3 MB of JSON: the slow part per object)."""
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    definitions = schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", schema_dir)
    return Resource.from_contents(definitions) @ Registry()


@functools.lru_cache(maxsize=256)
def _kind_validator(schema_dir: str, kind: str, api_version: str) -> Any | None:
    """A validator for one kind, or None when kubernetes-validate bundles no schema for it (custom resources)."""
    import jsonschema
    from kubernetes_validate.utils import schema_contents
    from referencing import Resource

    # File naming of kubernetes-validate: rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json",
                                 schema_dir)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(schema) @ _schema_registry(schema_dir)
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_dir_for(kubernetes_version: str) -> str:
    """The newest bundled schema set not newer than the target minor version, strict (unknown fields refused)."""
    from kubernetes_validate.utils import all_versions
    from packaging.version import Version

    target = Version(kubernetes_version)
    candidates = [v for v in all_versions() if Version(".".join(v.split(".")[:2])) <= target]
    if not candidates:
        raise DcforgeError(f"kubernetes-validate has no schemas for Kubernetes {kubernetes_version} or older")
    return f"v{candidates[-1]}-local-strict"


def schema_validate(objects: list[dict[str, Any]], kubernetes_version: str) -> SchemaReport:
    import jsonschema

    report = SchemaReport(kubernetes_version=kubernetes_version)
    schema_dir = schema_dir_for(kubernetes_version)
    for obj in objects:
        kind = str(obj.get("kind", "?"))
        validator = None
        if obj.get("apiVersion") != HELM_RELEASE_API_VERSION:
            validator = _kind_validator(schema_dir, kind, str(obj.get("apiVersion", "")))
        if validator is None:
            report.skipped[kind] += 1
            continue
        try:
            validator.validate(obj)
            report.validated += 1
        except jsonschema.ValidationError as error:
            report.errors.append(SchemaError(object_id(obj), ".".join(str(p) for p in error.path), error.message))
    return report


def verify_objects(spec: Environment, objects: list[dict[str, Any]]) -> Verification:
    return Verification(schema=schema_validate(objects, spec.versions.kubernetes),
                        violations=evaluate(objects, exceptions_for(spec)))


def verify_environment(spec: Environment) -> Verification:
    """Schema + compliance of everything `dcforge synth` would write for this environment (for `dcforge validate`
    and the `compliance` acceptance check)."""
    return verify_objects(spec, [obj for objects in synthesize(spec).values() for obj in objects])


AUDIT_POLICY_NOTE = ("no API-server audit policy declared (dcforge:security.auditPolicy): a self-managed cluster "
                     "then has no audit trail of Secrets access, RBAC changes, exec/attach or acceptance writes")


def write_audit_policy(spec: Environment, out_dir: Path) -> Path | None:
    """Write the declared audit policy as its own file (see dcforge.manifests.audit); remove a stale one."""
    from dcforge.manifests.audit import AUDIT_POLICY_FILE, audit_policy

    path = out_dir / AUDIT_POLICY_FILE
    policy = audit_policy(spec)
    if policy is None:
        path.unlink(missing_ok=True)
        return None
    path.write_text(render_yaml([policy]))
    return path


def synth_command(env: str, out_dir: Path, env_file: Path | None = None) -> int:
    """Write the environment's manifests to `out_dir`, print what was written and verified; 0 when schema and
    compliance hold, 1 otherwise (the files are written either way, so the problems can be inspected)."""
    from dcforge.checks import CATALOG
    from dcforge.spec import load_environment

    loaded = load_environment(None if env_file else env, path=env_file, checks=CATALOG)
    spec = loaded.spec
    files = synthesize(spec)
    written = write_files(files, Path(out_dir))
    objects = [obj for chunk in files.values() for obj in chunk]
    if (audit_file := write_audit_policy(spec, Path(out_dir))) is not None:
        written.append(audit_file)
    verification = verify_objects(spec, objects)
    print(f"dcforge synth: environment {spec.name} ({loaded.path}) -> {out_dir}: {len(written)} files, "
          f"{len(objects)} objects")
    if audit_file is None:
        print(f"note: {AUDIT_POLICY_NOTE}")
    print(summary_line(verification))
    for line in verification.lines():
        print(line)
    for violation in verification.violations:
        if violation.excepted:
            print(f"excepted {violation.rule_id}: {violation.resource} ({violation.exception})")
    return 0 if verification.ok else 1


def summary_line(verification: Verification) -> str:
    schema = verification.schema
    skipped = ", ".join(f"{kind} x{n}" for kind, n in sorted(schema.skipped.items())) or "none"
    excepted = sum(1 for v in verification.violations if v.excepted)
    return (f"schema (Kubernetes {schema.kubernetes_version}, strict): {schema.validated} valid, "
            f"{len(schema.errors)} invalid, skipped (no schema): {skipped}; compliance: "
            f"{len(verification.failures)} violations, {excepted} excepted")
