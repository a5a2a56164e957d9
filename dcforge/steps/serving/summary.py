"""Load-run figures as check metrics."""

from __future__ import annotations

from collections.abc import Sequence

from dcforge.steps.serving.settings import ServingLoadConfig
from dcforge.harness.result import CheckResult
from workloads.records import RequestRecord


def load_summary(config: ServingLoadConfig, records: Sequence[RequestRecord]) -> dict[str, float]:
    """`loadtests.metrics.summarize` of a load run, goodput judged by the check's per-request SLOs."""
    from loadtests.metrics import summarize

    return summarize(records, config.request_slo())


def add_summary_metrics(result: CheckResult, summary: dict[str, float]) -> None:
    """Every entry of `loadtests.metrics.summarize` as a metric declared in `load_metrics.LOAD_METRICS`."""
    for key, value in summary.items():
        result.add_metric(key, value)
