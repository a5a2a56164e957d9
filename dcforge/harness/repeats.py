"""Repeated measurements (`repeats: N`): each metric's mean over the repeats and its 95 % confidence interval.

The interval is Student's t (docs/metrics.md#repeats): mean ± t(0.975, N−1) · s / √N, s the sample standard
deviation (N−1 in the denominator). It is reported as two more keys of the same metric, `<key>.ci95_low` and
`<key>.ci95_high` (dcforge.harness.metrics.CI_BOUNDS), so an SLO judges a bound with the one SLO grammar:
`inference.p95_ttft_ms.ci95_high: "< 1000"` holds when even the pessimistic end of the interval meets the limit.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from dcforge.harness.metrics import CI_HIGH, CI_LOW
from dcforge.harness.result import CheckResult

CONFIDENCE = 0.95


def _t_density(x: float, dof: int) -> float:
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_norm - (dof + 1) / 2 * math.log1p(x * x / dof))


def _t_central_mass(x: float, dof: int, steps: int = 2000) -> float:
    """P(|T| <= x) for Student's t with `dof` degrees of freedom (Simpson's rule on the density over [0, x])."""
    h = x / steps
    total = _t_density(0.0, dof) + _t_density(x, dof)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, dof) for i in range(1, steps))
    return 2 * total * h / 3


def t_critical(dof: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value t((1 + confidence) / 2, dof): 12.706 for 1 degree of freedom, 2.776 for 4,
    1.96 in the limit. Solved by bisection on the t distribution's central mass (no scipy dependency)."""
    if dof < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {dof}")
    low, high = 0.0, 1.0
    while _t_central_mass(high, dof) < confidence:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central_mass(middle, dof) < confidence else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def mean_ci95(values: Sequence[float]) -> Interval:
    """Mean and Student-t 95 % interval of `values` (at least 2); identical values give a zero-width interval."""
    if len(values) < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {len(values)}")
    mean = statistics.fmean(values)
    half = t_critical(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def add_repeat_statistics(result: CheckResult, repeats: Sequence[CheckResult],
                          per_repeat_details: Sequence[str] = ()) -> None:
    """`result` holds the first repeat's metrics, `repeats` the others' (scratch results of the same check). Every
    metric that all of them reported becomes its mean, with `<key>.ci95_low` / `<key>.ci95_high`; the per-repeat
    values go into `details.repeats`. A metric missing from some repeat keeps the first repeat's value and is
    named in `details.repeats.not_in_every_repeat`. `per_repeat_details`: details keys (a verdict such as the client
    saturation) listed per repeat in `details.repeats`. A repeat's artefacts are kept as `<name>_repeat_<K>`."""
    if not repeats:
        return
    runs = [result, *repeats]
    per_repeat, partial = {}, []
    for key in list(result.metrics):
        if all(key in run.metrics for run in repeats):
            per_repeat[key] = [run.metrics[key].value for run in runs]
        else:
            partial.append(key)
    for key, values in per_repeat.items():
        finite = [value for value in values if math.isfinite(value)]
        if len(finite) < 2:
            continue
        interval = mean_ci95(finite)
        context = f"mean of {len(finite)} repeats"
        result.add_metric(key, interval.mean, context)
        result.add_metric(f"{key}.{CI_LOW}", interval.low, context)
        result.add_metric(f"{key}.{CI_HIGH}", interval.high, context)
    result.details["repeats"] = {"count": len(runs), "values": per_repeat, "not_in_every_repeat": partial,
                                 "interval": "Student t 95 %: mean ± t(0.975, N−1)·s/√N",
                                 **{key: [run.details.get(key) for run in runs] for key in per_repeat_details}}
    for index, run in enumerate(repeats, start=2):
        result.artefacts.update({f"{name}_repeat_{index}": path for name, path in run.artefacts.items()})
        if run.reason:  # a repeat that failed a verdict fails the check too
            result.fail(run.reason)
