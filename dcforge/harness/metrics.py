"""The metric catalogue: every metric a check can report is declared once, on the check, as a `MetricSpec`.

A check class lists its metrics in `metrics: ClassVar[tuple[MetricSpec, ...]]`; its `CheckResult` is created with
those declarations and `CheckResult.add_metric(key, value)` takes unit, direction and formula from them, so a
report, the `dcforge metrics` command and the README table all show the same entry. Reporting a key that the
check does not declare raises `UndeclaredMetric`: a programming error, never a silent new metric.

Keys follow the SLO grammar (docs/slos.md): `<metric>` or `<metric>.<stat>` inside a check, `<check>.<key>` in an
environment file. The definitions behind the formulas are in docs/metrics.md, one section per check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Better = Literal["higher", "lower"]
Direction = Literal["higher", "lower", "none"]

METRICS_DOC = "docs/metrics.md"
"""The document (relative to the repository root) that defines every check's metrics, one section per check."""


class UndeclaredMetric(LookupError):
    """A check reported a metric key that its `metrics` declaration does not list."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric a check can report: what it means, how it is computed, its unit and which way is better."""

    name: str
    """Metric name as the check reports it, without a statistic (`ttft_ms`)."""
    unit: str
    better: Better | None
    """Direction for baseline comparison; None: informational, never a regression."""
    formula: str
    """How the value is computed, as shown in reports."""
    meaning: str
    """One line a newcomer can read: what the number tells."""
    stats: tuple[str, ...] = ()
    """Statistics reported as `<name>.<stat>` (p50, p95, max); empty: the metric is reported as `<name>` itself."""

    @property
    def direction(self) -> Direction:
        return self.better or "none"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this declaration allows in `CheckResult.metrics`."""
        return tuple(f"{self.name}.{stat}" for stat in self.stats) if self.stats else (self.name,)


def find_spec(specs: Iterable[MetricSpec], key: str) -> MetricSpec | None:
    """The declaration that allows `key` (`ttft_ms.p95` -> the `ttft_ms` spec with stat p95), or None."""
    return next((spec for spec in specs if key in spec.keys), None)


def definition_link(check: str) -> str:
    """Where a check's metrics are defined: `docs/metrics.md#<check>` (a GitHub heading anchor)."""
    return f"{METRICS_DOC}#{check}"
