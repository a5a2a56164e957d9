"""Read the environment spec from the stack's `dcforge:` config (the same Pulumi.<stack>.yaml the harness reads).

Validation is `dcforge.spec`'s: the same pydantic models and cross-field rules as `dcforge validate`, so a bad
spec stops `pulumi up` with the same messages, before any resource is registered.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
from dcforge.errors import ConfigError
from dcforge.spec.loader import NAMESPACE, validate_spec
from dcforge.spec.models import Environment


def _config_keys() -> list[str]:
    """Names (without the `dcforge:` prefix) of every dcforge config key the engine passed to this program."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{NAMESPACE}:"
    return sorted(key.removeprefix(prefix) for key in keys if key.startswith(prefix))


def read_dcforge_config() -> dict[str, Any]:
    """All `dcforge:*` values as plain data (objects parsed from their JSON config form), read once."""
    config = pulumi.Config(NAMESPACE)
    values: dict[str, Any] = {}
    for key in _config_keys():
        raw = config.get(key)
        try:
            values[key] = json.loads(raw) if raw is not None else None
        except json.JSONDecodeError:
            values[key] = raw  # a plain string value; the model decides whether that is allowed
    return values


def spec_from_config(values: dict[str, Any], env_name: str, source: str) -> Environment:
    """Validate config values into an `Environment`; raises `ConfigErrors` naming `source` and each key."""
    if not values:
        raise ConfigError(source, None, f"no '{NAMESPACE}:' keys in the config of stack {env_name!r}")
    from dcforge.checks import CATALOG

    return validate_spec(values, env_name, source, checks=CATALOG)
