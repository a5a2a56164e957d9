"""The Check protocol and the context every check runs with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult
from dcforge.spec.loader import LoadedEnvironment


class CheckConfig(BaseModel):
    """Base of every check's settings model (`dcforge:acceptance.settings.<check>`).

    Fields are snake_case in Python and camelCase in the environment file; unknown keys are refused.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


@dataclass
class CheckContext:
    env: LoadedEnvironment
    report_dir: Path
    """The run's report directory; a check writes artefacts under `artefact_dir(name)`."""
    deadline: float
    """time.monotonic() by which the check must have finished (the runner interrupts it then)."""
    results: dict[str, CheckResult] = field(default_factory=dict)
    """Results of the checks that ran before this one, by name (e.g. serve the model `train` just trained)."""
    log: Callable[[str], None] = print
    """Progress lines for the live display; never pass secrets."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space shared between checks of one run (paths of trained checkpoints, server URLs, ...)."""

    def artefact_dir(self, check_name: str) -> Path:
        path = self.report_dir / "artefacts" / check_name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def relative(self, path: Path) -> str:
        """Artefact path as recorded in the report (relative to the report directory)."""
        return str(Path(path).resolve().relative_to(self.report_dir.resolve()))


@runtime_checkable
class Check(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[CheckConfig]]
    metrics: ClassVar[tuple[MetricSpec, ...]]
    """Every metric the check can report (see dcforge.harness.metrics); create results with
    `CheckResult(name, declared=metrics)`."""
    requires_declared_gpus: ClassVar[bool]
    """True: the runner skips the check, with the reason, when the environment's acceptance pool declares GPUs
    that this machine does not show (dcforge.harness.node.missing_declared_gpus); CPU numbers judged against GPU
    SLOs would mean nothing. False for checks that do not measure this node's GPUs."""

    def run(self, ctx: CheckContext, config: Any) -> CheckResult:
        """Measure, fill a CheckResult; raise CheckSkipped(reason) when the check cannot apply here."""
        ...
