"""Pulumi components of the dcforge platform stack (imported by `stacks/__main__.py` and the tests)."""

from .base import StackRegistry, component_order
from .objects import declare_object, resource_name, typed_class
from .platform import (
    COMPONENTS,
    DECLARATION_GC_THRESHOLDS,
    Acceptance,
    ClusterNetwork,
    DistributedStorage,
    GpuNodePool,
    GpuOperator,
    SecurityBaseline,
    build_platform,
    declare_platform,
)

__all__ = [
    "COMPONENTS",
    "DECLARATION_GC_THRESHOLDS",
    "Acceptance",
    "ClusterNetwork",
    "DistributedStorage",
    "GpuNodePool",
    "GpuOperator",
    "SecurityBaseline",
    "StackRegistry",
    "build_platform",
    "component_order",
    "declare_object",
    "declare_platform",
    "resource_name",
    "typed_class",
]
