"""What a check produces: metrics (with unit, direction and formula), plots, artefacts and a status."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dcforge.harness.metrics import Better, MetricSpec, UndeclaredMetric, find_spec


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass
class Metric:
    """A measured value with its declaration's unit, direction, formula and meaning (dcforge.harness.metrics)."""

    value: float
    unit: str = ""
    better: Better | None = None
    """Direction for baseline comparison; None means the metric is informational."""
    formula: str = ""
    """The formula the value was computed with (docs/metrics.md), shown in the report."""
    meaning: str = ""
    """What the number tells, from the check's declaration (empty in reports written before it existed)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Other names of this figure by source (`{"aiperf": "time_to_first_token.p95"}`), from the declaration."""


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float]


@dataclass
class Plot:
    """One chart in the HTML report. `kind` is line, scatter, bar or histogram (histogram uses only `y`)."""

    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    kind: Literal["line", "scatter", "bar", "histogram"] = "line"
    log_x: bool = False
    log_y: bool = False
    markers: list[dict[str, Any]] = field(default_factory=list)
    """Vertical event lines: {"x": 12.5, "label": "SIGKILL replica 1"}."""


@dataclass
class CheckResult:
    name: str
    status: Status = Status.PASS
    reason: str = ""
    metrics: dict[str, Metric] = field(default_factory=dict)
    plots: list[Plot] = field(default_factory=list)
    artefacts: dict[str, str] = field(default_factory=dict)
    """Artefact name -> path relative to the report directory."""
    details: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON-able facts (versions, settings used, per-size tables)."""
    started_at: str = ""
    duration_s: float = 0.0
    declared: tuple[MetricSpec, ...] = field(default=(), repr=False, compare=False)
    """The check's metric declarations (its `metrics`); `add_metric` accepts only keys they allow."""

    def add_metric(self, key: str, value: float, context: str = "") -> None:
        """Record `key` (`tokens_per_s`, `ttft_ms.p95`) with unit, direction and formula from its declaration;
        `context` names what this run's formula was applied to (a message size, the peak used) and is appended."""
        spec = find_spec(self.declared, key)
        if spec is None:
            raise UndeclaredMetric(f"check {self.name!r} reports metric {key!r}, which its `metrics` declaration "
                                   f"does not list (declared: {', '.join(k for s in self.declared for k in s.keys)})")
        formula = f"{spec.formula} ({context})" if context else spec.formula
        self.metrics[key] = Metric(float(value), spec.unit, spec.better, formula, spec.meaning, spec.aliases_of(key))

    def fail(self, reason: str) -> "CheckResult":
        """Mark the check failed (a measured property is wrong), keeping the first reason and adding others."""
        self.status = Status.FAIL if self.status in (Status.PASS, Status.FAIL) else self.status
        self.reason = f"{self.reason}; {reason}" if self.reason else reason
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["declared"]  # the declarations are code, not results: each metric carries its own entry
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckResult":
        return cls(
            name=data["name"],
            status=Status(data["status"]),
            reason=data.get("reason", ""),
            metrics={k: Metric(**v) for k, v in data.get("metrics", {}).items()},
            plots=[Plot(**{**p, "series": [Series(**s) for s in p.get("series", [])]}) for p in data.get("plots", [])],
            artefacts=dict(data.get("artefacts", {})),
            details=dict(data.get("details", {})),
            started_at=data.get("started_at", ""),
            duration_s=float(data.get("duration_s", 0.0)),
        )


class CheckSkipped(Exception):
    """Raised by a check that cannot run here; the reason is reported, and the check never counts as passed."""
