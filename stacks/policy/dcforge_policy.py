"""CrossGuard policies built from `dcforge.compliance.RULES`: the same rule functions as `dcforge validate`.

Resource rules become one `ResourceValidationPolicy` each (judging one resource's inputs as a manifest dict); set
rules (default-deny NetworkPolicy in every namespace, a PDB for every inference Deployment, ...) become one
`StackValidationPolicy` each over every Kubernetes resource of the stack. Violations covered by the namespace-
scoped GPU exceptions are not reported here; `dcforge validate` lists them. The exceptions are the stack's own
(`exceptions_for(spec)`, e.g. IPC_LOCK only where RDMA is attached): the stack name is read from the resource URN
and its environment file loaded; the generic `GPU_EXCEPTIONS` apply when that file cannot be read.

The `PolicyPack` itself is created only in `__main__.py`: constructing one starts a gRPC server and blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from dcforge.compliance import GPU_EXCEPTIONS, RULES, Rule, RuleException, evaluate, exceptions_for, resource_id
from dcforge.errors import DcforgeError
from dcforge.manifests import HELM_RELEASE_API_VERSION

POLICY_PACK_NAME = "dcforge-compliance"
HELM_RELEASE_TYPES = ("kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v4:Release")
_SEVERITY = {"high": Severity.HIGH, "medium": Severity.MEDIUM, "low": Severity.LOW}
# High and medium findings block `pulumi up`; low ones are advisory (reported, not blocking), as in the report.
_ENFORCEMENT = {"high": EnforcementLevel.MANDATORY, "medium": EnforcementLevel.MANDATORY,
                "low": EnforcementLevel.ADVISORY}


def plain(value: Any) -> Any:
    """Deep copy of policy props as dicts and lists: the engine hands them over wrapped in read-only proxies that
    are Mappings/Sequences but not dicts/lists, which the rule functions (and `dcforge synth` dicts) are."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(item) for item in value]
    return value


def manifest_from_props(resource_type: str, props: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest dict a pulumi-kubernetes resource was declared from, or None for other resources.

    Kubernetes resources carry their wire-form object as inputs (apiVersion, kind, metadata, spec, ...); a Helm
    release becomes the same pseudo-manifest `dcforge synth` writes for it, so release rules see one form.
    """
    props = plain(props)
    if resource_type in HELM_RELEASE_TYPES:
        return {
            "apiVersion": HELM_RELEASE_API_VERSION,
            "kind": "HelmRelease",
            "metadata": {"name": props.get("name", ""), "namespace": props.get("namespace", "default")},
            "spec": {
                "chart": props.get("chart", ""),
                "version": props.get("version", ""),
                "repository": (props.get("repositoryOpts") or {}).get("repo", ""),
                "values": props.get("values") or {},
            },
        }
    if resource_type.startswith("kubernetes:") and "apiVersion" in props and "kind" in props:
        return props
    return None


ExceptionsOf = Callable[[str], tuple[RuleException, ...]]
"""Stack name -> the exceptions that apply to it."""


def stack_of(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<type>::<name>` -> `<stack>`."""
    return urn.removeprefix("urn:pulumi:").split("::", 1)[0]


@functools.lru_cache(maxsize=None)
def environment_exceptions(stack: str) -> tuple[RuleException, ...]:
    """Exceptions of environment `stack` (its Pulumi.<stack>.yaml), or the generic GPU exceptions."""
    from dcforge.spec import load_environment

    try:
        return tuple(exceptions_for(load_environment(stack).spec))
    except (DcforgeError, OSError):
        return tuple(GPU_EXCEPTIONS)


def _resource_policy(rule: Rule, exceptions_of: ExceptionsOf) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        manifest = manifest_from_props(args.resource_type, args.props)
        if manifest is None:
            return
        for violation in evaluate([manifest], exceptions_of(stack_of(args.urn)), rules=[rule]):
            if not violation.excepted:
                report_violation(f"{violation.resource}: {violation.message}", None)

    return ResourceValidationPolicy(
        name=rule.id,
        description=f"{rule.title} ({rule.source})",
        validate=validate,
        enforcement_level=_ENFORCEMENT[rule.severity],
        severity=_SEVERITY[rule.severity],
    )


def _stack_policy(rule: Rule, exceptions_of: ExceptionsOf) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        manifests: list[dict[str, Any]] = []
        urns: dict[str, str] = {}
        for resource in args.resources:
            manifest = manifest_from_props(resource.resource_type, resource.props)
            if manifest is not None:
                manifests.append(manifest)
                urns[resource_id(manifest)] = resource.urn
        stack = stack_of(args.resources[0].urn) if args.resources else ""
        for violation in evaluate(manifests, exceptions_of(stack), rules=[rule]):
            if not violation.excepted:
                report_violation(f"{violation.resource}: {violation.message}", urns.get(violation.resource))

    return StackValidationPolicy(
        name=rule.id,
        description=f"{rule.title} ({rule.source})",
        validate=validate,
        enforcement_level=_ENFORCEMENT[rule.severity],
        severity=_SEVERITY[rule.severity],
    )


def build_policies(rules: Iterable[Rule] = RULES, exceptions: Iterable[RuleException] | None = None,
                   ) -> list[ResourceValidationPolicy | StackValidationPolicy]:
    """One policy per compliance rule, named by the rule id.

    `exceptions`: fixed waivers for every stack; None (the pack's default) derives them per stack from its spec.
    """
    if exceptions is None:
        exceptions_of: ExceptionsOf = environment_exceptions
    else:
        fixed = tuple(exceptions)
        exceptions_of = lambda stack: fixed  # noqa: E731
    return [_resource_policy(rule, exceptions_of) if rule.scope == "resource" else _stack_policy(rule, exceptions_of)
            for rule in rules]
