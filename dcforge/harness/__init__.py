"""Acceptance harness: Check protocol, results, SLOs, the runner and managed child processes."""

from dcforge.harness.check import Check, CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec, UndeclaredMetric
from dcforge.harness.result import CheckResult, CheckSkipped, Metric, Plot, Series, Status

__all__ = ["Check", "CheckConfig", "CheckContext", "CheckResult", "CheckSkipped", "Metric", "MetricSpec", "Plot",
           "Series", "Status", "UndeclaredMetric"]
