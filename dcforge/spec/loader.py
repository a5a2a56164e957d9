"""Find, parse and validate `stacks/Pulumi.<env>.yaml` into an `Environment`.

Every problem becomes a `ConfigError` naming the file, the line and the key path, e.g.
`stacks/Pulumi.prod.yaml:14: dcforge:gpuPools[0].gpusPerNode: Input should be greater than or equal to 1 (got -8)`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dcforge.errors import ConfigError, ConfigErrors
from dcforge.paths import REPO_ROOT, STACKS_DIR  # noqa: F401  (REPO_ROOT: re-exported for older imports)
from dcforge.spec.models import Environment, FieldValueError
from dcforge.errors import pydantic_message
from dcforge.spec.validation import CheckCatalog, cross_field_problems

NAMESPACE = "dcforge"


def stacks_dir() -> Path:
    """`$DCFORGE_STACKS_DIR`, else `./stacks` if present, else the `stacks/` beside this package's checkout."""
    if override := os.environ.get("DCFORGE_STACKS_DIR"):
        return Path(override)
    if (Path.cwd() / "stacks" / "Pulumi.yaml").exists():
        return Path.cwd() / "stacks"
    return STACKS_DIR


def environment_file(name: str, directory: Path | None = None) -> Path:
    directory = directory or stacks_dir()
    path = directory / f"Pulumi.{name}.yaml"
    if not path.is_file():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in directory.glob("Pulumi.*.yaml"))
        raise ConfigError(_display(path), None,
                          f"no environment {name!r}: expected one of {', '.join(known) or '(none found)'}")
    return path


@dataclass(frozen=True)
class LoadedEnvironment:
    spec: Environment
    path: Path
    sha256: str
    raw_config: dict[str, Any]
    """The `dcforge:` keys as written (camelCase), for Pulumi and Ansible."""


def load_environment(name: str | None = None, *, path: Path | None = None,
                     checks: CheckCatalog | None = None) -> LoadedEnvironment:
    """Load by environment name (from the stacks dir) or by explicit file path.

    `checks`: the acceptance checks the environment may name (dcforge.checks.CATALOG); every command passes it.
    Without it the check names and their settings are taken as written (the spec does not know the checks).
    """
    if path is None:
        path = environment_file(name or "local")
    path = Path(path)
    env_name = name or path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    display = _display(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(display, None, f"cannot read: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark else display
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(where, None, f"YAML syntax error: {problem}") from None
    config = _dcforge_config(document, display)
    spec = validate_spec(config, env_name, display, lines, checks=checks)
    if spec.acceptance.profile and spec.acceptance.profile.endswith((".yaml", ".yml")):
        from dcforge.spec.profiles import resolve_profile

        # a malformed profile file is bad input now, not when the run starts
        resolve_profile(spec.acceptance.profile, None, None, path, checks.names() if checks is not None else None)
    return LoadedEnvironment(spec=spec, path=path, sha256=hashlib.sha256(text.encode()).hexdigest(),
                             raw_config=config)


def validate_spec(config: dict[str, Any], env_name: str, source: str,
                  lines: dict[str, int] | None = None, *, checks: CheckCatalog | None = None) -> Environment:
    """Validate the `dcforge:` values of one stack (keys without the namespace) into an `Environment`.

    Used by `load_environment` and by the Pulumi program (which gets the values from the engine), so both refuse a
    bad spec with the same one-line messages naming `source` (and the line, when `lines` maps key paths to lines).
    """
    lines = lines or {}
    try:
        spec = Environment.model_validate({"name": env_name, **config})
    except ValidationError as error:
        raise ConfigErrors([
            _located(source, lines, _key_path(detail["loc"], _refused_field(detail)), pydantic_message(detail))
            for detail in error.errors()
        ]) from None
    problems = cross_field_problems(spec, checks)
    if problems:
        raise ConfigErrors([_located(source, lines, key, message) for key, message in problems])
    return spec


def _dcforge_config(document: Any, display: str) -> dict[str, Any]:
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ConfigError(display, "config", "expected a Pulumi stack file with a 'config:' mapping")
    config: dict[str, Any] = {}
    for key, value in document["config"].items():
        namespace, _, name = str(key).partition(":")
        if namespace != NAMESPACE:
            continue  # other providers' settings (kubernetes:context, ...) belong to Pulumi
        if isinstance(value, dict) and set(value) == {"secure"}:
            raise ConfigError(display, f"config.{key}", "encrypted (secure) values are not allowed for spec keys")
        config[name] = value
    return config


def _refused_field(detail: dict) -> str | None:
    """The key a model validator named with `FieldValueError` (pydantic keeps the exception in the detail)."""
    error = (detail.get("ctx") or {}).get("error")
    return error.field if isinstance(error, FieldValueError) else None


def _key_path(loc: tuple, field: str | None = None) -> str:
    """`("gpuPools", 0, "quota")` -> `dcforge:gpuPools[0].quota`, with a validator's own `field` below it."""
    if field:
        loc = (*loc, *field.split("."))
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not path:
            path = f"{NAMESPACE}:{part}"
        else:
            path += f".{part}"
    return path or f"{NAMESPACE}:"


def _key_lines(node: yaml.Node | None) -> dict[str, int]:
    """Map each key path (as `_key_path` writes it) to its 1-based line in the file."""
    lines: dict[str, int] = {}

    def walk(current: yaml.Node, path: str) -> None:
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                key = str(key_node.value)
                child = key if not path else f"{path}.{key}"
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                child = f"{path}[{index}]"
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    if node is not None and isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == "config":
                walk(value_node, "")
    return lines


def _located(display: str, lines: dict[str, int], key: str, message: str) -> ConfigError:
    probe = key.replace("[]", "")
    while probe and probe not in lines:
        cut = max(probe.rfind("."), probe.rfind("["))
        if cut <= 0:
            break
        probe = probe[:cut]
    line = lines.get(probe)
    return ConfigError(f"{display}:{line}" if line else display, key, message)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
