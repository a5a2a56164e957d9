"""Run a Pulumi program under `pulumi.runtime.set_mocks` and record the resource graph it registers.

No Pulumi CLI or cluster is needed: the mock monitor answers every registration, echoing inputs as outputs. Used
by the unit tests (assertions and golden graphs) and by `benchmarks/stacks_scale.py` (a mocked `pulumi up`); a
test helper, so it lives here and not in the shipped `stacks/components`.
"""

from __future__ import annotations

import gc
import json
import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks as runtime_mocks
from pulumi.runtime import settings as runtime_settings

from dcforge.paths import STACKS_DIR

# How Pulumi marks a secret value on the wire (a sentinel key); the mocks receive secrets in this form.
_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG_VALUE = "1b47061264138c4ac30d75fd1eb44270"


@dataclass
class Registered:
    """One resource as the engine saw it."""

    type: str
    name: str
    urn: str
    parent: str
    """URN of the parent (the Stack for top-level resources)."""
    dependencies: list[str]
    """URNs named in `depends_on` (and implied by Output inputs)."""
    inputs: dict[str, Any]
    """Inputs with secret values unwrapped; see `secret_inputs`."""
    secret_inputs: set[str] = field(default_factory=set)
    """Top-level input names whose value was sent as a Pulumi secret."""
    additional_secret_outputs: list[str] = field(default_factory=list)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(_SECRET_SIG_KEY) == _SECRET_SIG_VALUE


class _EchoMocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, None]:
        return {}, None


class _RecordingMonitor(runtime_mocks.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = pulumi.runtime.rpc.deserialize_properties(request.object, keep_unknowns=True)
            secret = {name for name, value in inputs.items() if is_secret(value)}
            self.registered.append(Registered(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                dependencies=sorted(request.dependencies),
                inputs={name: value["value"] if name in secret else value for name, value in inputs.items()},
                secret_inputs=secret,
                additional_secret_outputs=list(request.additionalSecretOutputs),
            ))
        return response


def run_under_mocks(program: Callable[[], Any], *, stack: str = "test", project: str = "dcforge",
                    config: dict[str, Any] | None = None, preview: bool = False) -> list[Registered]:
    """Run `program` as a Pulumi program with mocks; returns what it registered, in registration order.

    `config` maps full keys (`dcforge:gpuPools`) to plain values; they reach the program as the engine would pass
    them (JSON strings for objects). Exceptions of the program propagate.
    """
    runtime_settings.ROOT.set(None)  # a fresh Stack per run, or URNs would name the previous stack
    runtime_config.set_all_config({
        key: value if isinstance(value, str) else json.dumps(value) for key, value in (config or {}).items()
    })
    monitor = _RecordingMonitor(_EchoMocks())
    pulumi.runtime.set_mocks(monitor.mocks, project=project, stack=stack, preview=preview, monitor=monitor)
    thresholds = gc.get_threshold()  # the program tunes the collector for itself; the caller's process gets it back
    try:
        pulumi.runtime.test(program)()
    finally:
        runtime_config.set_all_config({})
        gc.set_threshold(*thresholds)
    return monitor.registered


def run_stack_program(env_name: str, config: dict[str, Any], *, preview: bool = False) -> list[Registered]:
    """Run `stacks/__main__.py` itself as stack `env_name` with the given `dcforge:` config."""
    return run_under_mocks(
        lambda: runpy.run_path(str(STACKS_DIR / "__main__.py"), run_name="__main__"),
        stack=env_name, config=config, preview=preview,
    )


def stack_config(raw_config: dict[str, Any]) -> dict[str, Any]:
    """`LoadedEnvironment.raw_config` (keys without namespace) -> engine config keys (`dcforge:<key>`)."""
    return {f"dcforge:{key}": value for key, value in raw_config.items()}


# Inputs worth seeing in a golden graph, per resource kind (dotted paths into the inputs). Everything else about the
# objects is covered by the golden files of the synthesized manifests; the graph is about structure.
GOLDEN_INPUTS: dict[str, tuple[str, ...]] = {
    "Release": ("chart", "version", "namespace", "repositoryOpts.repo", "createNamespace"),
    "Namespace": ("metadata.labels",),
    "NodePatch": ("metadata.labels", "spec.taints"),
    "StorageClass": ("provisioner",),
    "ServiceAccount": ("automountServiceAccountToken",),
    "ServiceAccountPatch": ("automountServiceAccountToken",),
    "NetworkPolicy": ("spec.policyTypes",),
}


def _short_urn(urn: str) -> str:
    """`urn:pulumi:s::p::a$b$kubernetes:core/v1:Namespace::training` -> `kubernetes:core/v1:Namespace::training`."""
    if not urn:
        return ""
    _, _, qualified_type, name = urn.split("::", 3)
    return f"{qualified_type.rsplit('$', 1)[-1]}::{name}"


def _dig(inputs: dict[str, Any], path: str) -> Any:
    value: Any = inputs
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def graph_snapshot(registered: list[Registered]) -> list[dict[str, Any]]:
    """A stable, reviewable view of a mocked resource graph: type, name, parent, dependencies, key inputs."""
    nodes = []
    for resource in registered:
        node: dict[str, Any] = {"type": resource.type, "name": resource.name, "parent": _short_urn(resource.parent)}
        if resource.dependencies:
            node["dependsOn"] = sorted(_short_urn(urn) for urn in resource.dependencies)
        if resource.secret_inputs:
            node["secretInputs"] = sorted(resource.secret_inputs)
        for path in GOLDEN_INPUTS.get(resource.type.rsplit(":", 1)[-1], ()):
            value = _dig(resource.inputs, path)
            if value is not None:
                node.setdefault("inputs", {})[path] = value
        nodes.append(node)
    return sorted(nodes, key=lambda node: (node["type"], node["name"]))
