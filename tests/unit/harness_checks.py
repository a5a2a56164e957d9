"""Small checks used to exercise the runner: they are test inputs, registered only inside tests."""

from __future__ import annotations

import time

from pydantic import Field

from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, CheckSkipped, Plot, Series


class ValueConfig(CheckConfig):
    value: float = 1.0
    """The metric value to report."""
    sleep_s: float = Field(default=0.0, ge=0)
    """How long to take."""
    outcome: str = "pass"
    """pass, fail, skip, raise, interrupt."""


class ValueCheck:
    name = "value"
    description = "Reports `value` as metric `score` after sleeping `sleepS`."
    Config = ValueConfig
    metrics = (
        MetricSpec("score", "pts", "higher", "score = value", "the configured value"),
        MetricSpec("latency_ms", "ms", "lower", "100 / value", "a latency that falls as the value rises",
                   stats=("p95",)),
    )
    requires_declared_gpus = False

    def run(self, ctx: CheckContext, config: ValueConfig) -> CheckResult:
        time.sleep(config.sleep_s)
        if config.outcome == "skip":
            raise CheckSkipped("no GPU here")
        if config.outcome == "raise":
            raise RuntimeError("boom")
        if config.outcome == "interrupt":
            raise KeyboardInterrupt
        result = CheckResult(self.name, declared=self.metrics)
        result.add_metric("score", config.value)
        result.add_metric("latency_ms.p95", 100 / max(config.value, 1e-9))
        result.plots.append(Plot("score", "step", "pts", [Series("score", [0, 1], [0, config.value])]))
        (ctx.artefact_dir(self.name) / "note.txt").write_text("hello")
        result.artefacts["note"] = ctx.relative(ctx.artefact_dir(self.name) / "note.txt")
        if config.outcome == "fail":
            result.fail("measured property is wrong")
        return result


class GpuValueCheck(ValueCheck):
    """ValueCheck that only means something where the environment's GPUs are visible."""

    requires_declared_gpus = True


class HandoffProducerCheck(ValueCheck):
    """Hands a checkpoint directory to later checks, as `train` does."""

    outputs = ("trained_checkpoint_dir",)

    def run(self, ctx: CheckContext, config: ValueConfig) -> CheckResult:
        ctx.outputs.trained_checkpoint_dir = ctx.artefact_dir(self.name)
        return super().run(ctx, config)


class HandoffConsumerCheck(ValueCheck):
    """Needs the checkpoint directory a producer handed over; records which one it got."""

    def run(self, ctx: CheckContext, config: ValueConfig) -> CheckResult:
        directory = ctx.outputs.require("trained_checkpoint_dir")
        result = super().run(ctx, config)
        result.details["received"] = ctx.relative(directory)
        return result
