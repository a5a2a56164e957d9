"""Load-run figures as check metrics."""

from __future__ import annotations

from dcforge.harness.result import CheckResult


def add_summary_metrics(result: CheckResult, summary: dict[str, float]) -> None:
    """Every entry of `loadtests.metrics.summarize` as a metric declared in `_load_metrics.LOAD_METRICS`."""
    for key, value in summary.items():
        result.add_metric(key, value)
