"""The metric catalogue: every metric a check can report is declared once, on the check, as a `MetricSpec`.

A check class lists its metrics in `metrics: ClassVar[tuple[MetricSpec, ...]]`; its `CheckResult` is created with
those declarations and `CheckResult.add_metric(key, value)` takes unit, direction and formula from them, so a
report, the `dcforge metrics` command and the README table all show the same entry. Reporting a key that the
check does not declare raises `UndeclaredMetric`: a programming error, never a silent new metric.

Keys follow the SLO grammar (docs/slos.md): `<metric>`, `<metric>.<stat>` or (vLLM's names) `<stat>_<metric>`
inside a check, `<check>.<key>` in an environment file. The definitions behind the formulas are in
docs/metrics.md, one section per check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from dcforge.spec.slo import CI_BOUNDS, CI_HIGH, CI_LOW

__all__ = ["CI_BOUNDS", "CI_HIGH", "CI_LOW", "FORMER_NAME", "METRICS_DOC", "Better", "Direction", "MetricAlias",
           "MetricSpec", "UndeclaredMetric", "alias_index", "definition_link", "find_spec"]

Better = Literal["higher", "lower"]
Direction = Literal["higher", "lower", "none"]

METRICS_DOC = "docs/metrics.md"
"""The document (relative to the repository root) that defines every check's metrics, one section per check."""


class UndeclaredMetric(LookupError):
    """A check reported a metric key that its `metrics` declaration does not list."""


FORMER_NAME = "dcforge (former)"
"""The alias source of a name dcforge reported a metric under before (a baseline report may still use it)."""


@dataclass(frozen=True)
class MetricAlias:
    """Another name of a metric: a peer tool's (AIPerf) or a name dcforge used before. Shown by `dcforge metrics`
    and next to every reported value in report.json; never accepted as an SLO key (validation names the canonical
    key instead), so an environment file has one name per figure."""

    source: str
    """Whose name it is: `aiperf`, or FORMER_NAME."""
    name: str
    """The metric's name there; for a metric with statistics, its keys are `<name>.<stat>`."""
    stat_names: tuple[tuple[str, str], ...] = ()
    """Statistics the source names differently (AIPerf's `avg` for `mean`): (our stat, its stat) pairs."""

    def key(self, stat: str | None) -> str:
        if stat is None:
            return self.name
        return f"{self.name}.{dict(self.stat_names).get(stat, stat)}"


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
    stat_first: bool = False
    """Keys are `<stat>_<name>` (vLLM's `p95_ttft_ms`) instead of `<name>.<stat>`."""
    aliases: tuple[MetricAlias, ...] = ()

    @property
    def direction(self) -> Direction:
        return self.better or "none"

    def key(self, stat: str | None) -> str:
        if stat is None:
            return self.name
        return f"{stat}_{self.name}" if self.stat_first else f"{self.name}.{stat}"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this declaration allows in `CheckResult.metrics`."""
        return tuple(self.key(stat) for stat in self.stats) if self.stats else (self.name,)

    def stat_of(self, key: str) -> str | None:
        """The statistic `key` (one of `keys`) names; None for a metric without statistics."""
        return next((stat for stat in self.stats if self.key(stat) == key), None)

    def aliases_of(self, key: str) -> dict[str, str]:
        """Source -> that source's name for `key` (one of `keys`): `{"aiperf": "time_to_first_token.p95"}`."""
        base, _, bound = key.rpartition(".")
        if bound in CI_BOUNDS:
            return {source: f"{name}.{bound}" for source, name in self.aliases_of(base).items()}
        stat = self.stat_of(key)
        return {alias.source: alias.key(stat) for alias in self.aliases}


def find_spec(specs: Iterable[MetricSpec], key: str) -> MetricSpec | None:
    """The declaration that allows `key` (`ttft_ms.p95` -> the `ttft_ms` spec with stat p95; a confidence bound
    `ttft_ms.p95.ci95_high` -> the same spec), or None."""
    base, _, suffix = key.rpartition(".")
    if suffix in CI_BOUNDS:
        key = base
    return next((spec for spec in specs if key in spec.keys), None)


def alias_index(specs: Iterable[MetricSpec]) -> dict[str, tuple[str, str]]:
    """Every alias key of these declarations -> (canonical key, alias source)."""
    index = {}
    for spec in specs:
        for key in spec.keys:
            for source, alias in spec.aliases_of(key).items():
                if alias != key:
                    index[alias] = (key, source)
    return index


def definition_link(check: str) -> str:
    """Where a check's metrics are defined: `docs/metrics.md#<check>` (a GitHub heading anchor)."""
    return f"{METRICS_DOC}#{check}"
