"""Compliance rules over Kubernetes manifest dicts (wire form), one function per rule.

The same `RULES` run in the CrossGuard policy pack (`stacks/policy/`, resource rules per resource and set rules on
the whole stack), in `dcforge validate` on the synthesized manifests, and in the `compliance` acceptance check.
Each rule names its source: CIS Kubernetes Benchmark (v1.9) control, NSA/CISA Kubernetes Hardening Guide (v1.2),
Kyverno pod-security policy, Checkov check id.

Exceptions are scoped by namespace (GPU Operator, RDMA, storage daemons need host access); an excepted violation
is still reported, with `excepted=True` and the exception's id, so the report lists what was waived and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dcforge.compliance.model import (Rule, RuleException, Scope, Severity, Violation, apply_exceptions,  # noqa: F401
                                      resource_id, resource_namespace)
from dcforge.compliance.exceptions import GPU_EXCEPTIONS, exceptions_for  # noqa: F401
from dcforge.compliance.rules import RULES, RULES_BY_ID  # noqa: F401


def evaluate(manifests: list[dict[str, Any]], exceptions: Iterable[RuleException] = GPU_EXCEPTIONS,
             rules: Iterable[Rule] | None = None) -> list[Violation]:
    """Every violation of every rule, excepted ones marked; sorted by rule id then resource."""
    found = [violation for rule in (RULES if rules is None else rules) for violation in rule.check(manifests)]
    found.sort(key=lambda v: (v.rule_id, v.resource, v.detail, v.message))
    return apply_exceptions(found, exceptions)


def unexcepted(violations: Iterable[Violation]) -> list[Violation]:
    return [v for v in violations if not v.excepted]


__all__ = ["GPU_EXCEPTIONS", "RULES", "RULES_BY_ID", "Rule", "RuleException", "Violation", "apply_exceptions",
           "evaluate", "exceptions_for", "resource_id", "resource_namespace", "unexcepted"]
