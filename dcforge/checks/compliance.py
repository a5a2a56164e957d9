"""`compliance`: the environment's cluster objects judged by the compliance rules, its manifests by the schema.

Source `synth`: what `dcforge synth` writes for this environment (the same dicts the Pulumi stack declares), so the
verdict holds before anything is deployed. Source `cluster`: the live objects (`kubectl get`) in the namespaces
dcforge created, including the pods Helm charts started. `auto` picks `cluster` when the acceptance target is
kubernetes. Exceptions (GPU Operator, RDMA, storage daemons) are reported with their reasons and not counted; the
schema is always checked on the synthesized manifests. Metrics: `violations` (not excepted, every severity),
`violations_high|medium|low`, `excepted`, `schema_errors`, `objects` (judged), `rules`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult

if TYPE_CHECKING:
    from dcforge.synth import Verification

SEVERITY_ORDER = ("high", "medium", "low")


class ComplianceConfig(CheckConfig):
    source: Literal["auto", "synth", "cluster"] = "auto"
    """What the rules judge: the synthesized manifests, or the live cluster (`auto`: cluster for target kubernetes)."""
    kubectl: str = "kubectl"
    """kubectl executable used with source `cluster` (the kubeconfig and context of `dcforge accept --kubeconfig
    --context`, else kubectl's own defaults)."""
    kube_context: str | None = None
    """kubeconfig context to read the cluster from (instead of `--context`)."""
    kubectl_timeout_s: float = Field(default=120.0, gt=0)
    """Limit for each `kubectl get`."""
    fail_on_severity: Literal["high", "medium", "low", "never"] = "medium"
    """Fail the check when a non-excepted violation of this severity or worse exists (`never`: leave it to SLOs)."""
    fail_on_schema_errors: bool = True
    """Fail when a synthesized object does not validate against the Kubernetes schema of versions.kubernetes."""
    write_manifests: bool = Field(default=True)
    """Keep the synthesized manifests under the report's artefacts (what exactly was judged)."""


class ComplianceCheck:
    name = "compliance"
    description = "Compliance rules (CIS, NSA/CISA, Kyverno restricted, Checkov) and schema over the cluster manifests."
    Config = ComplianceConfig
    metrics = (
        MetricSpec("violations", "violations", "lower", "rule violations not covered by an exception, every severity",
                   "how many objects break a compliance rule"),
        *(MetricSpec(f"violations_{severity}", "violations", "lower",
                     f"rule violations of severity {severity} not covered by an exception",
                     f"violations of {severity}-severity rules") for severity in SEVERITY_ORDER),
        MetricSpec("excepted", "violations", None, "violations covered by a documented exception",
                   "rule violations accepted with a reason (GPU Operator, RDMA, storage daemons)"),
        MetricSpec("schema_errors", "objects", "lower", "objects failing the Kubernetes OpenAPI schema",
                   "manifests the cluster's API server would refuse"),
        MetricSpec("objects", "objects", None, "cluster objects judged by the rules", "size of what was judged"),
        MetricSpec("rules", "rules", None, "compliance rules evaluated", "size of the rule set"),
    )
    requires_declared_gpus = False  # judges manifests, not this node

    def run(self, ctx: CheckContext, config: ComplianceConfig) -> CheckResult:
        from dcforge.synth import summary_line, synthesize

        result = CheckResult(self.name, declared=self.metrics)
        files = synthesize(ctx.env.spec)
        source, objects, verification = _judge(ctx, config, files)
        _add_counts(result, verification, objects)
        ctx.log(summary_line(verification))
        _record_findings(ctx, config, result, files, verification, source)
        _verdict(config, result, verification)
        return result


def _judge(ctx: CheckContext, config: ComplianceConfig, files: dict) -> tuple[str, list[dict], Verification]:
    """The objects judged (synthesized, or the live ones in dcforge's scope) and the rules' and schema's verdict."""
    from dcforge.compliance import evaluate, exceptions_for
    from dcforge.placement.scope import targets_a_cluster
    from dcforge.synth import verify_objects

    spec = ctx.env.spec
    objects = [obj for chunk in files.values() for obj in chunk]
    source = config.source if config.source != "auto" else (
        "cluster" if targets_a_cluster(spec) else "synth")
    verification = verify_objects(spec, objects)  # the schema is always judged on the synthesized manifests
    if source == "cluster":
        from dcforge.compliance.live import cluster_objects, managed_scope

        # the cluster `dcforge accept --kubeconfig --context` points at, unless kubeContext names another context
        live = cluster_objects(config.kubectl, ctx.artefact_dir(ComplianceCheck.name) / "kubectl",
                               config.kubectl_timeout_s, config.kube_context or ctx.cluster.context,
                               ctx.cluster.kubeconfig)
        objects = managed_scope(live)
        verification.violations = evaluate(objects, exceptions_for(spec))
        ctx.log(f"{len(live)} live objects, {len(objects)} in the namespaces and scope dcforge manages")
    return source, objects, verification


def _add_counts(result: CheckResult, verification: Verification, objects: list[dict]) -> None:
    from dcforge.compliance import RULES, RULES_BY_ID

    failures = verification.failures
    by_severity = Counter(RULES_BY_ID[v.rule_id].severity for v in failures)
    result.add_metric("violations", len(failures))
    for severity in SEVERITY_ORDER:
        result.add_metric(f"violations_{severity}", by_severity[severity])
    result.add_metric("excepted", len(verification.violations) - len(failures))
    result.add_metric("schema_errors", len(verification.schema.errors))
    result.add_metric("objects", len(objects))
    result.add_metric("rules", len(RULES))


def _record_findings(ctx: CheckContext, config: ComplianceConfig, result: CheckResult, files: dict,
                     verification: Verification, source: str) -> None:
    """findings.json (every rule, exception, violation and schema error), the judged manifests, and the details:
    every violating object with its rule, not only counts per rule."""
    from dcforge.compliance import RULES, exceptions_for
    from dcforge.synth import AUDIT_POLICY_NOTE, write_audit_policy, write_files

    spec = ctx.env.spec
    failures = verification.failures
    # Informational findings: reported, never counted as violations.
    informational = [] if spec.security.audit_policy is not None else [AUDIT_POLICY_NOTE]
    exceptions = exceptions_for(spec)
    findings = {
        "informational": informational,
        "kubernetes_version": verification.schema.kubernetes_version,
        "rules": [{"id": r.id, "title": r.title, "severity": r.severity, "source": r.source, "scope": r.scope}
                  for r in RULES],
        "exceptions": [asdict(e) for e in exceptions],
        "violations": [asdict(v) for v in verification.violations],
        "schema_errors": [asdict(e) for e in verification.schema.errors],
        "schema_skipped": dict(verification.schema.skipped),
    }
    folder = ctx.artefact_dir(ComplianceCheck.name)
    (folder / "findings.json").write_text(json.dumps(findings, indent=2))
    result.artefacts["findings"] = ctx.relative(folder / "findings.json")
    if config.write_manifests:
        write_files(files, folder / "manifests")
        write_audit_policy(spec, folder / "manifests")
        result.artefacts["manifests"] = ctx.relative(folder / "manifests")
    result.details = {
        "source": source,
        "violations_per_rule": dict(sorted(Counter(v.rule_id for v in failures).items())),
        "violating_objects": [f"{v.rule_id} {v.resource}: {v.message}" for v in failures],
        "exceptions": [f"{e.id} ({', '.join(e.namespaces)}): {e.reason}" for e in exceptions],
        "excepted": [f"{v.rule_id} {v.resource} ({v.exception})" for v in verification.violations if v.excepted],
        "schema_skipped": dict(verification.schema.skipped),
        "informational": informational,
    }


def _verdict(config: ComplianceConfig, result: CheckResult, verification: Verification) -> None:
    from dcforge.compliance import RULES_BY_ID

    if config.fail_on_schema_errors and verification.schema.errors:
        first = verification.schema.errors[0]
        result.fail(f"{len(verification.schema.errors)} objects fail the Kubernetes "
                    f"{verification.schema.kubernetes_version} schema, first {first.resource}: {first.message}")
    if config.fail_on_severity != "never":
        worst = SEVERITY_ORDER[: SEVERITY_ORDER.index(config.fail_on_severity) + 1]
        blocking = [v for v in verification.failures if RULES_BY_ID[v.rule_id].severity in worst]
        if blocking:
            first = blocking[0]
            result.fail(f"{len(blocking)} violations of severity {config.fail_on_severity} or worse (every one in "
                        f"details.violating_objects), first {first.rule_id} {first.resource}: {first.message}")
