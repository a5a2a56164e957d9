"""The types of dcforge.compliance: kept apart from the package's __init__, which re-exports
them with its submodules' entry points, so that the submodules import them without an import cycle."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from typing import Any, Literal

Severity = Literal["high", "medium", "low"]
Scope = Literal["resource", "set"]


@dataclass(frozen=True)
class Violation:
    """One rule broken by one object."""

    rule_id: str
    resource: str
    """`Kind/namespace/name`, or `Kind/name` for cluster-scoped objects."""
    message: str
    excepted: bool = False
    """True when an exception covers it: reported, but not counted as a violation."""
    exception: str = ""
    """Id of the exception that covers it."""
    detail: str = ""
    """The offending item when an exception may be narrower than the rule (e.g. the capability `IPC_LOCK`)."""


@dataclass(frozen=True)
class Rule:
    id: str
    """Stable id, e.g. `DCF-POD-001`."""
    title: str
    severity: Severity
    source: str
    """Where the rule comes from: CIS control, NSA/CISA section, Kyverno policy, Checkov id."""
    scope: Scope
    """`resource`: judges each manifest alone; `set`: needs the whole set of manifests."""
    check: Callable[[list[dict[str, Any]]], list[Violation]]


@dataclass(frozen=True)
class RuleException:
    """A waiver: violations of `rules` by objects in `namespaces` (fnmatch patterns) are reported as excepted."""

    id: str
    rules: tuple[str, ...]
    namespaces: tuple[str, ...]
    reason: str
    details: tuple[str, ...] = field(default=())
    """When set, only violations whose `detail` is one of these are covered (e.g. only the IPC_LOCK capability)."""

    def covers(self, violation: Violation) -> bool:
        if violation.rule_id not in self.rules:
            return False
        if self.details and violation.detail not in self.details:
            return False
        return any(fnmatch(resource_namespace(violation.resource), pattern) for pattern in self.namespaces)


def resource_id(manifest: dict[str, Any]) -> str:
    meta = manifest.get("metadata") or {}
    kind = manifest.get("kind", "?")
    if kind == "Namespace":
        return f"Namespace/{meta.get('name', '?')}"
    namespace = meta.get("namespace")
    return f"{kind}/{namespace}/{meta.get('name', '?')}" if namespace else f"{kind}/{meta.get('name', '?')}"


def resource_namespace(resource: str) -> str:
    """Namespace of a `Kind/namespace/name` id; a Namespace object is judged as part of itself."""
    parts = resource.split("/")
    if parts[0] == "Namespace" and len(parts) == 2:
        return parts[1]
    return parts[1] if len(parts) == 3 else ""




def apply_exceptions(violations: Iterable[Violation], exceptions: Iterable[RuleException]) -> list[Violation]:
    exceptions = list(exceptions)
    result = []
    for violation in violations:
        covering = next((e for e in exceptions if e.covers(violation)), None)
        result.append(replace(violation, excepted=True, exception=covering.id) if covering else violation)
    return result
