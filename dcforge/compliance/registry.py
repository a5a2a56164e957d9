"""The compliance rule registry: the decorators that register a rule (`resource_rule`, `pod_rule`, `set_rule`)
into `RULES`, and the helpers rules read manifests with (pod specs inside workload kinds, containers, labels)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dcforge.compliance.model import Rule, Severity, Violation, resource_id

Manifest = dict[str, Any]
# Where each workload kind keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    path = POD_SPEC_PATHS.get(manifest.get("kind", ""))
    if path is None:
        return None
    found = dig(manifest, *path)
    return found if isinstance(found, dict) else {}


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in CONTAINER_LISTS:
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                yield container


def container_name(container: dict[str, Any]) -> str:
    return str(container.get("name", "?"))


def namespace_of(manifest: Manifest) -> str | None:
    return dig(manifest, "metadata", "namespace")


def labels_of(manifest: Manifest) -> dict[str, str]:
    return dig(manifest, "metadata", "labels") or {}


# A finding: message, and optionally the offending item that an exception may be scoped to.
Finding = str | tuple[str, str]
RULES: list[Rule] = []


def _violations(rule_id: str, manifest: Manifest, findings: Iterable[Finding]) -> list[Violation]:
    out = []
    for finding in findings:
        message, detail = finding if isinstance(finding, tuple) else (finding, "")
        out.append(Violation(rule_id=rule_id, resource=resource_id(manifest), message=message, detail=detail))
    return out


def resource_rule(rule_id: str, title: str, severity: Severity, source: str):
    """Register `judge(manifest) -> findings` as a resource-scope rule."""

    def register(judge: Callable[[Manifest], Iterable[Finding]]) -> Callable[[Manifest], Iterable[Finding]]:
        def check(manifests: list[Manifest]) -> list[Violation]:
            return [v for m in manifests if isinstance(m, dict) for v in _violations(rule_id, m, judge(m))]

        RULES.append(Rule(id=rule_id, title=title, severity=severity, source=source, scope="resource", check=check))
        return judge

    return register


def pod_rule(rule_id: str, title: str, severity: Severity, source: str):
    """Register `judge(manifest, pod_spec) -> findings`, applied to every object that carries a pod spec."""

    def register(judge: Callable[[Manifest, dict[str, Any]], Iterable[Finding]]):
        def on_manifest(manifest: Manifest) -> Iterable[Finding]:
            spec = pod_spec(manifest)
            return [] if spec is None else judge(manifest, spec)

        resource_rule(rule_id, title, severity, source)(on_manifest)
        return judge

    return register


def set_rule(rule_id: str, title: str, severity: Severity, source: str):
    """Register `check(manifests) -> violations` as a set-scope rule."""

    def register(check: Callable[[list[Manifest]], list[Violation]]):
        RULES.append(Rule(id=rule_id, title=title, severity=severity, source=source, scope="set", check=check))
        return check

    return register
