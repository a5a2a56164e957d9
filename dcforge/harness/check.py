"""The Check protocol and the context every check runs with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from dcforge.errors import ConfigError
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult
from dcforge.spec.loader import LoadedEnvironment
from dcforge.spec.validation import moved_key_message


class CheckConfig(BaseModel):
    """Base of every check's settings model (`dcforge:acceptance.settings.<check>`).

    Fields are snake_case in Python and camelCase in the environment file; unknown keys are refused.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    moved_keys: ClassVar[dict[str, str]] = {}
    """Keys that used to be settings -> the key that replaced them (`{check}` is the check's name); an old key is
    refused with a hint naming the new one instead of a bare "unknown key"."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, new_key in cls.moved_keys.items():
                if key in data:
                    raise ValueError(f"{key}: {moved_key_message(new_key.format(check='<check>'))}")
        return data


@dataclass
class RunOutputs:
    """What a check hands to later checks of the same run: one typed field per hand-off.

    A field's `producer` metadata names the check that sets it; that check lists the field in its `outputs`.
    A consumer reads the attribute, or calls `require(name)` to be skipped with a reason naming the producer.
    """

    trained_checkpoint_dir: Path | None = field(default=None, metadata={"producer": "train"})
    """The checkpoint directory the `train` check wrote (the serving checks may serve that model)."""
    cpu_matmul_peak_flops: dict[int, float] = field(default_factory=dict, metadata={"producer": None})
    """Measured fp32 matmul FLOP/s by intra-op thread count: a cache the torch checks share, measured once."""

    @staticmethod
    def producer(name: str) -> str | None:
        return next(f.metadata.get("producer") for f in fields(RunOutputs) if f.name == name)

    def require(self, name: str) -> Any:
        """The value of output `name`; CheckSkipped naming its producer when no check produced it in this run."""
        value = getattr(self, name)
        if value is None:
            from dcforge.harness.result import CheckSkipped

            raise CheckSkipped(f"needs {name} from the {self.producer(name)!r} check, which did not produce it in "
                               "this run (not selected, skipped or failed)")
        return value


@dataclass(frozen=True)
class ClusterAccess:
    """The cluster that `acceptance.target: kubernetes` runs workloads on (`dcforge accept --kubeconfig --context`);
    None: the usual places ($KUBECONFIG, ~/.kube/config and its current context, or the in-cluster account)."""

    kubeconfig: str | None = None
    context: str | None = None


def report_run_id(env_name: str, report_dir: Path) -> str:
    """The id of one `dcforge accept` run, `<env>-<report folder>`: the `dcforge.io/run` label of every
    Kubernetes object the run creates (docs/executors.md)."""
    return f"{env_name}-{Path(report_dir).name}"


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
    outputs: RunOutputs = field(default_factory=RunOutputs)
    """Hand-offs between the checks of one run (RunOutputs); shared, so a check's outputs reach later ones."""
    cluster: ClusterAccess = field(default_factory=ClusterAccess)
    """Where target kubernetes runs workloads (the accept command's --kubeconfig and --context)."""

    @property
    def run_id(self) -> str:
        return report_run_id(self.env.spec.name, self.report_dir)

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
    """True: the runner fails the check without running it, with the shortfall as its reason, when the
    environment's acceptance pool declares GPUs that this machine does not show (dcforge.harness.node.gpu_shortfall);
    CPU numbers judged against GPU SLOs would mean nothing. False for checks that do not measure this node's GPUs
    (or, like gpu_health, judge the shortfall themselves)."""
    # Optional: `outputs = ("trained_checkpoint_dir", ...)`: the RunOutputs fields this check sets for later ones.
    # Optional: `on_pool = True`: on target kubernetes the check runs its workload on a machine of the acceptance
    # pool (dcforge/placement/scope.py `single_node`), so the GPUs it needs are the pool's, not this machine's.

    def run(self, ctx: CheckContext, config: Any) -> CheckResult:
        """Measure, fill a CheckResult; raise CheckSkipped(reason) when the check cannot apply here."""
        ...


def runs_on_pool(check: object, spec: Any) -> bool:
    """Whether `check` (a check class, with the optional `on_pool`) runs its workload on a machine of the
    acceptance pool in this environment rather than on the machine running dcforge: on target kubernetes."""
    return bool(getattr(check, "on_pool", False)) and spec.acceptance.target == "kubernetes"


def settings_error(ctx: CheckContext, check: str, key: str, message: str) -> ConfigError:
    """A refusal of the check's settings, naming the key (`dcforge:acceptance.settings.<check>.<key>`)."""
    return ConfigError(ctx.env.path, f"dcforge:acceptance.settings.{check}.{key}", message)
