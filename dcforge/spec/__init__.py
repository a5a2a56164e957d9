"""The environment spec: the single source of truth for stacks, playbooks and acceptance."""

from dcforge.spec.loader import LoadedEnvironment, environment_file, load_environment, stacks_dir, validate_spec
from dcforge.spec.models import (
    Acceptance,
    Environment,
    GpuPool,
    Network,
    Security,
    Storage,
    Versions,
)

__all__ = [
    "Acceptance",
    "Environment",
    "GpuPool",
    "LoadedEnvironment",
    "Network",
    "Security",
    "Storage",
    "Versions",
    "environment_file",
    "load_environment",
    "stacks_dir",
    "validate_spec",
]
