"""SLO expressions (docs/slos.md): `"<op> <number>"` judged against `<check>.<metric>[.<stat>]`.

Operators: < <= > >= == !=. Numbers may use exponents (`1e-3`) and `_` separators. A list of expressions must
all hold. A metric that no check produced is an error, never a pass; a metric of a skipped check is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from dcforge.harness.result import CheckResult, Status
from dcforge.spec.slo import OPERATORS, Slo, SloSyntaxError, parse_slo, parse_slos

__all__ = ["OPERATORS", "Slo", "SloResult", "SloSyntaxError", "Verdict", "acceptance_slos", "evaluate", "parse_slo",
           "parse_slos"]

Verdict = Literal["pass", "fail", "error", "skipped"]


@dataclass
class SloResult:
    metric: str
    expression: str
    verdict: Verdict
    value: float | None
    reason: str = ""
    source: str = "environment file"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "expression": self.expression, "verdict": self.verdict,
                "value": self.value, "reason": self.reason, "source": self.source}


def evaluate(slo: Slo, results: dict[str, CheckResult]) -> SloResult:
    result = results.get(slo.check)
    if result is None:
        return SloResult(slo.metric, slo.expression, "skipped", None, f"check {slo.check!r} did not run", slo.source)
    if result.status == Status.SKIPPED:
        return SloResult(slo.metric, slo.expression, "skipped", None,
                         f"check {slo.check!r} was skipped: {result.reason}", slo.source)
    metric = result.metrics.get(slo.metric_name)
    if metric is None:
        reason = f"check {slo.check!r} produced no metric {slo.metric_name!r}"
        if result.status == Status.ERROR:
            reason += f" (the check errored: {result.reason})"
        elif result.status == Status.FAIL and not result.metrics:
            reason += f" (the check failed: {result.reason})"
        elif result.metrics:
            reason += f"; it produced: {', '.join(sorted(result.metrics))}"
        return SloResult(slo.metric, slo.expression, "error", None, reason, slo.source)
    verdict: Verdict = "pass" if slo.holds(metric.value) else "fail"
    reason = "" if verdict == "pass" else f"{metric.value:g} {metric.unit} is not {slo.expression}".replace("  ", " ")
    return SloResult(slo.metric, slo.expression, verdict, metric.value, reason, slo.source)


def acceptance_slos(env) -> tuple[list[Slo], str]:
    """The SLOs a run judges -- the environment file's, then its profile's thresholds for metrics the file leaves
    unset -- and a sentence saying which profile was used and why.

    `profile: auto` takes the SKU from the acceptance pool, or on an environment without pools from the GPUs
    visible here (the `gpu` verification environment runs on whatever GPUs the machine has).
    """
    from dcforge.errors import ConfigError
    from dcforge.spec.profiles import effective_slos, resolve_profile

    spec = env.spec
    model, per_node = None, None
    if (pool := spec.acceptance_pool) is not None:
        model, per_node = pool.gpu_model, pool.gpus_per_node
    elif spec.acceptance.profile == "auto":
        from dcforge.harness.node import visible_gpus
        from dcforge.spec.gpus import gpu_model_for_device_name

        gpus = visible_gpus()
        known = gpu_model_for_device_name(gpus[0].name) if gpus else None
        model, per_node = (known.name, len(gpus)) if known else (None, None)
    try:
        profile, how = resolve_profile(spec.acceptance.profile, model, per_node, env.path)
    except KeyError as error:  # validated at load time; kept for direct callers
        raise ConfigError(env.path, "dcforge:acceptance.profile", f"unknown profile {error.args[0]!r}") from None
    slos = []
    for definition in effective_slos(spec.acceptance.slos, profile, spec.acceptance.checks):
        try:
            slos.append(replace(parse_slo(definition.metric, definition.expression), source=definition.source))
        except SloSyntaxError as error:
            raise ConfigError(env.path, f"dcforge:acceptance.slos.{definition.metric}", str(error)) from None
    return slos, how
