"""Threshold profiles (`data/profiles/*.yaml`): per GPU SKU × node shape × fabric, each threshold with its source,
status and tolerance; `dcforge:acceptance.profile` turns them into default SLOs that explicit SLOs override.

A malformed profile is bad input: one line naming the file and the key (exit 2).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from dcforge.errors import ConfigError, ConfigErrors
from dcforge.spec.gpus import GPU_MODELS

THRESHOLD_OPS = (">=", ">", "<=", "<")
SLO_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?$")
PROFILE_SOURCE = "profile"
ENVIRONMENT_SOURCE = "environment file"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Threshold(_Model):
    op: Literal[">=", ">", "<=", "<"]
    value: float
    unit: str = ""
    tolerance: float = Field(ge=0, lt=1)
    """Relative slack: the SLO is value·(1 − tolerance) for >=/> and value·(1 + tolerance) for <=/<."""
    status: Literal["provisional", "calibrated"]
    source: str = Field(min_length=10)
    """Which public figure (or which calibration run), and where it was published."""
    note: str = ""
    median: float | None = None
    spread: float | None = None
    """Calibrated thresholds: the measured median and spread they were proposed from."""

    @property
    def bound(self) -> float:
        factor = 1 - self.tolerance if self.op in (">=", ">") else 1 + self.tolerance
        return self.value * factor

    @property
    def expression(self) -> str:
        return f"{self.op} {self.bound:.6g}"


class Reference(_Model):
    value: float
    unit: str = ""
    source: str = Field(min_length=10)


class Profile(_Model):
    name: str = Field(pattern=r"^[a-z0-9][-a-z0-9.]*$")
    gpu_model: str | None
    """A key of gpus.yaml; null for a machine without GPUs (a profile calibrated on CPU)."""
    gpus_per_node: int = Field(ge=0, le=16)
    fabric: str
    thresholds: dict[str, Threshold] = Field(min_length=1)
    references: dict[str, Reference] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    """Written by `dcforge calibrate`: date, host, versions, runs, k."""

    @field_validator("gpu_model")
    @classmethod
    def _known_gpu(cls, value: str | None) -> str | None:
        if value is not None and value not in GPU_MODELS:
            raise ValueError(f"unknown GPU model {value!r}; known: {', '.join(sorted(GPU_MODELS))}")
        return value

    @field_validator("thresholds")
    @classmethod
    def _metric_keys(cls, value: dict[str, Threshold]) -> dict[str, Threshold]:
        for key in value:
            if not SLO_KEY.match(key):
                raise ValueError(f"threshold key {key!r} must be '<check>.<metric>[.<stat>]' like an SLO key")
        return value

    def unknown_checks(self, known: Sequence[str]) -> list[str]:
        """Threshold keys whose check is not among `known` (judged against the checks registry by the caller:
        the spec does not import the checks)."""
        return [key for key in self.thresholds if key.split(".", 1)[0] not in known]


def _key(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def load_profile_file(path: Path, display: str | None = None, known_checks: Sequence[str] | None = None) -> Profile:
    """A profile file validated; with `known_checks`, every threshold's check must be one of them."""
    display = display or str(path)
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(display, None, f"cannot read profile: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{display}:{mark.line + 1}" if mark else display
        raise ConfigError(where, None, f"YAML syntax error: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(document, dict):
        raise ConfigError(display, None, "expected a mapping with name, gpuModel, gpusPerNode, fabric, thresholds")
    try:
        profile = Profile.model_validate(document)
    except ValidationError as error:
        from dcforge.errors import pydantic_message

        raise ConfigErrors([ConfigError(display, _key(detail["loc"]) or None, pydantic_message(detail))
                            for detail in error.errors()]) from None
    if known_checks is not None and (unknown := profile.unknown_checks(known_checks)):
        raise ConfigError(display, f"thresholds.{unknown[0]}",
                          f"unknown check {unknown[0].split('.', 1)[0]!r}; known: {', '.join(known_checks)}")
    return profile


@functools.lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, Profile]:
    """Every shipped profile by name; a malformed one is a ConfigError naming its file and key."""
    directory = resources.files("dcforge.spec").joinpath("data/profiles")
    profiles: dict[str, Profile] = {}
    for entry in sorted(directory.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        display = f"dcforge/spec/data/profiles/{entry.name}"
        profile = load_profile_file(Path(str(entry)), display)
        if profile.name in profiles:
            raise ConfigError(display, "name", f"profile {profile.name!r} is defined twice")
        profiles[profile.name] = profile
    return profiles


def resolve_profile(choice: str | None, gpu_model: str | None, gpus_per_node: int | None,
                    env_path: Path | None = None, known_checks: Sequence[str] | None = None
                    ) -> tuple[Profile | None, str]:
    """The profile `dcforge:acceptance.profile` names, and a sentence saying how it was chosen.

    `auto`: the shipped profile of the acceptance pool's GPU model and GPUs per node (none when no profile or no
    pool matches -- reported, not an error); a name: that shipped profile; a path ending in .yaml: that file,
    relative to the environment file.
    """
    if not choice:
        return None, "no profile (dcforge:acceptance.profile not set)"
    if choice.endswith((".yaml", ".yml")):
        path = Path(choice)
        if not path.is_absolute() and env_path is not None:
            path = Path(env_path).parent / path
        return load_profile_file(path, choice, known_checks), f"profile file {choice}"
    profiles = builtin_profiles()
    if choice == "auto":
        if gpu_model is None:
            return None, "auto: no GPU pool to take a SKU from, so no profile"
        matches = [p for p in profiles.values() if p.gpu_model == gpu_model and p.gpus_per_node == gpus_per_node]
        if not matches:
            return None, f"auto: no shipped profile for {gpus_per_node} x {gpu_model}"
        return matches[0], f"auto: {matches[0].name} for {gpus_per_node} x {gpu_model}"
    if choice not in profiles:
        raise KeyError(choice)
    return profiles[choice], f"profile {choice}"


@dataclass(frozen=True)
class SloDefinition:
    """One SLO as judged, with where its threshold came from."""

    metric: str
    expression: str
    source: str


def effective_slos(explicit: dict[str, str | list[str]], profile: Profile | None,
                   checks: list[str]) -> list[SloDefinition]:
    """Explicit SLOs first (they win), then each profile threshold whose check runs and whose metric has no
    explicit SLO."""
    slos = [SloDefinition(metric, expression, ENVIRONMENT_SOURCE)
            for metric, expressions in explicit.items()
            for expression in ([expressions] if isinstance(expressions, str) else expressions)]
    if profile is not None:
        for metric, threshold in profile.thresholds.items():
            if metric in explicit or metric.split(".", 1)[0] not in checks:
                continue
            slos.append(SloDefinition(metric, threshold.expression,
                                      f"{PROFILE_SOURCE} {profile.name} ({threshold.status}, value "
                                      f"{threshold.value:g} {threshold.unit}, tolerance {threshold.tolerance:g}): "
                                      f"{threshold.source}"))
    return slos
