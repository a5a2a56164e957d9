"""SLO expressions (docs/slos.md): `"<op> <number>"` judged against `<check>.<metric>[.<stat>]`.

Operators: < <= > >= == !=. Numbers may use exponents (`1e-3`) and `_` separators. A list of expressions must
all hold. A metric that no check produced is an error, never a pass; a metric of a skipped check is skipped.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Literal

from dcforge.harness.result import CheckResult, Status

OPERATORS = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_EXPRESSION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


class SloSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Slo:
    metric: str
    """Full key: `<check>.<metric name as the check reports it>`."""
    op: str
    threshold: float

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


Verdict = Literal["pass", "fail", "error", "skipped"]


@dataclass
class SloResult:
    metric: str
    expression: str
    verdict: Verdict
    value: float | None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"metric": self.metric, "expression": self.expression, "verdict": self.verdict,
                "value": self.value, "reason": self.reason}


def evaluate(slo: Slo, results: dict[str, CheckResult]) -> SloResult:
    result = results.get(slo.check)
    if result is None:
        return SloResult(slo.metric, slo.expression, "skipped", None, f"check {slo.check!r} did not run")
    if result.status == Status.SKIPPED:
        return SloResult(slo.metric, slo.expression, "skipped", None,
                         f"check {slo.check!r} was skipped: {result.reason}")
    metric = result.metrics.get(slo.metric_name)
    if metric is None:
        reason = f"check {slo.check!r} produced no metric {slo.metric_name!r}"
        if result.status == Status.ERROR:
            reason += f" (the check errored: {result.reason})"
        elif result.metrics:
            reason += f"; it produced: {', '.join(sorted(result.metrics))}"
        return SloResult(slo.metric, slo.expression, "error", None, reason)
    verdict: Verdict = "pass" if slo.holds(metric.value) else "fail"
    reason = "" if verdict == "pass" else f"{metric.value:g} {metric.unit} is not {slo.expression}".replace("  ", " ")
    return SloResult(slo.metric, slo.expression, verdict, metric.value, reason)
