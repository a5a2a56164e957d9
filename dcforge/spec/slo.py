"""The SLO grammar of the environment file (docs/slos.md): `"<op> <number>"` for `<check>.<metric>[.<stat>]`.

Operators: < <= > >= == !=. Numbers may use exponents (`1e-3`) and `_` separators. A list of expressions must
all hold. Part of the spec: validation parses every SLO when the environment is loaded; the harness judges them
(dcforge.harness.slo).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

OPERATORS = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
CI_LOW, CI_HIGH = "ci95_low", "ci95_high"
CI_BOUNDS = (CI_LOW, CI_HIGH)
"""Suffixes of a repeated measurement's 95 % confidence bounds (`repeats`, dcforge.harness.repeats): the key
`inference.p95_ttft_ms.ci95_high` is the upper bound of `p95_ttft_ms`, judged with the same expressions."""
_EXPRESSION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


class SloSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Slo:
    metric: str
    """Full key: `<check>.<metric name as the check reports it>`."""
    op: str
    threshold: float
    source: str = "environment file"
    """Where the threshold came from: the environment file, or a profile with its figure's provenance."""

    @property
    def check(self) -> str:
        return self.metric.split(".", 1)[0]

    @property
    def metric_name(self) -> str:
        return self.metric.split(".", 1)[1]

    @property
    def expression(self) -> str:
        return f"{self.op} {self.threshold:g}"

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return OPERATORS[self.op](value, self.threshold)


def parse_slo(metric: str, expression: str) -> Slo:
    if not isinstance(expression, str):
        raise SloSyntaxError(f"expected a string like '< 500', got {expression!r}")
    match = _EXPRESSION.match(expression)
    if not match:
        raise SloSyntaxError(
            f"bad SLO expression {expression!r}: expected '<op> <number>' with op one of {' '.join(OPERATORS)}"
        )
    return Slo(metric=metric, op=match.group(1), threshold=float(match.group(2).replace("_", "")))


def parse_slos(slos: dict[str, str | list[str]]) -> list[Slo]:
    parsed: list[Slo] = []
    for metric, expressions in slos.items():
        for expression in [expressions] if isinstance(expressions, str) else expressions:
            parsed.append(parse_slo(metric, expression))
    return parsed
