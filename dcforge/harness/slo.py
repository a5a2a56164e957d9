"""SLO expressions (docs/slos.md): `"<op> <number>"` judged against `<check>.<metric>[.<stat>]`.

Operators: < <= > >= == !=. Numbers may use exponents (`1e-3`) and `_` separators. A list of expressions must
all hold. A metric that no check produced is an error, never a pass; a metric of a skipped check is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dcforge.harness.result import CheckResult, Status
from dcforge.spec.slo import OPERATORS, Slo, SloSyntaxError, parse_slo, parse_slos

__all__ = ["OPERATORS", "Slo", "SloResult", "SloSyntaxError", "Verdict", "evaluate", "parse_slo", "parse_slos"]

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
