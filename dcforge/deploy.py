"""`dcforge preview|up|destroy --env X`: the `stacks/` Pulumi program run by the real engine, through the Automation API.

The stack is the environment name; its config is the environment file `stacks/Pulumi.<env>.yaml`. The program runs
inline (in this process, `stacks/__main__.py` as is), so the engine needs no Python language host: the CLI and the
Kubernetes provider of `make pulumi-tools` are enough (`dcforge.pulumi_engine`). State goes to a local file backend
by default (`--backend`, else `$PULUMI_BACKEND_URL`, else `file://<repo>/.pulumi-state`, or `file://~/.dcforge/pulumi`
for a read-only checkout); stack secrets are encrypted with the passphrase provider by default (`--secrets-provider`).

The engine writes its own bookkeeping (the passphrase salt) into the stack's config file. So that it never rewrites
an environment file (comments and all), it runs in a workspace folder beside the state: Pulumi.yaml and
Pulumi.<env>.yaml are copied there on every run, the engine's own keys kept from the previous copy.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dcforge.errors import DcforgeError
from dcforge.pulumi_engine import Engine, find_engine

PROJECT_NAME = "dcforge"
STATE_DIR_NAME = ".pulumi-state"
USER_STATE_DIR = Path("~/.dcforge/pulumi")
DEFAULT_SECRETS_PROVIDER = "passphrase"
ENGINE_CONFIG_KEYS = ("encryptionsalt", "secretsprovider", "encryptedkey")
"""Top-level keys the engine writes into a stack config file (the secrets provider's state)."""
STACK_TYPE = "pulumi:pulumi:Stack"
POLICY_ANALYZER = Path("policy") / "analyzer"
"""The policy pack as an executable: the engine runs a pack given as a file itself, while a pack folder needs the
Python language host, which is not built (stacks/policy/analyzer)."""
PASSPHRASE_HINT = (
    "the passphrase secrets provider encrypts stack secrets: set PULUMI_CONFIG_PASSPHRASE "
    "(or PULUMI_CONFIG_PASSPHRASE_FILE) and re-run; an empty value is allowed for throw-away stacks"
)
OPERATIONS = ("preview", "up", "destroy")
UNCHANGED_OPERATIONS = frozenset({"same", "read", "refresh"})
"""Engine step operations that leave the cluster as it is (a refresh only reads it)."""


class DeployFailed(DcforgeError):
    """The engine ran and the operation failed (a resource error, a policy refusal, an unreachable cluster)."""

    exit_code = 1


class DeployInterrupted(DcforgeError):
    """Ctrl-C: the engine cancelled the operation and saved the state of what it had done."""

    exit_code = 130


@dataclass(frozen=True)
class DeployOptions:
    backend_url: str | None = None
    """None: `$PULUMI_BACKEND_URL`, else the local state folder (`default_backend_url`)."""
    secrets_provider: str = DEFAULT_SECRETS_PROVIDER
    policy_pack: bool = True
    """Run the CrossGuard pack of stacks/policy inside the engine (preview and up)."""
    refresh: bool = False
    """Read the cluster's objects first, so drift (an object deleted or changed by hand) shows in the plan."""
    kubeconfig: Path | None = None
    context: str | None = None


@dataclass(frozen=True)
class DeployResult:
    """What one preview/up/destroy did: the report's deploy section."""

    env_name: str
    operation: str
    backend_url: str
    secrets_provider: str
    versions: dict[str, str]
    changes: dict[str, int]
    """Operation -> resource count as the engine summed it, e.g. {"create": 42, "same": 3}."""
    by_type: dict[str, dict[str, int]]
    """Resource type -> operation -> count, from the engine's step events."""
    duration_s: float
    outputs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def changed(self) -> int:
        """Resources the operation changed (or, for a preview, would change) on the cluster."""
        return sum(count for operation, count in self.changes.items() if operation not in UNCHANGED_OPERATIONS)


def local_state_folder(stacks_dir: Path) -> Path:
    """The state folder beside the stacks (if the checkout is writable), else one in the home dir."""
    repo = stacks_dir.resolve().parent
    return repo / STATE_DIR_NAME if os.access(repo, os.W_OK) else USER_STATE_DIR.expanduser()


def default_backend_url(stacks_dir: Path) -> str:
    """`$PULUMI_BACKEND_URL`, else the local state folder."""
    return os.environ.get("PULUMI_BACKEND_URL") or f"file://{local_state_folder(stacks_dir)}"


def _state_folder(url: str, stacks_dir: Path) -> Path:
    """The folder of a file:// backend; the workspace of a remote backend lives in the local state folder."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://")).expanduser()
    return local_state_folder(stacks_dir)


def _check_secrets(provider: str) -> None:
    if provider == "passphrase" and not {"PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"} & set(os.environ):
        raise DcforgeError(PASSPHRASE_HINT)


def prepare_workspace(stacks_dir: Path, env_file: Path, folder: Path) -> Path:
    """`folder` with the project file of `stacks_dir` and a copy of `env_file`, plus the engine's keys it saved
    there before."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Pulumi.yaml").write_text((stacks_dir / "Pulumi.yaml").read_text())
    stack_file = folder / env_file.name
    engine_lines = []
    if stack_file.exists():
        pattern = re.compile(rf"^({'|'.join(ENGINE_CONFIG_KEYS)}):")
        engine_lines = [line for line in stack_file.read_text().splitlines() if pattern.match(line)]
    stack_file.write_text(env_file.read_text().rstrip("\n") + "\n" + "".join(f"{line}\n" for line in engine_lines))
    return folder


def inline_program(stacks_dir: Path) -> Callable[[], None]:
    """`stacks/__main__.py`, run as the stack's program in this process (its imports resolve in `stacks_dir`)."""
    def program() -> None:
        if str(stacks_dir) not in sys.path:
            sys.path.insert(0, str(stacks_dir))
        runpy.run_path(str(stacks_dir / "__main__.py"), run_name="__main__")

    return program


class EngineEvents:
    """Collects the engine's structured events: steps per resource type, resource errors, policy violations."""

    def __init__(self) -> None:
        self.by_type: dict[str, Counter[str]] = {}
        self.errors: list[str] = []
        self.violations: list[str] = []

    def __call__(self, event: Any) -> None:
        if (pre := event.resource_pre_event) is not None:
            step = pre.metadata
            self.by_type.setdefault(step.type, Counter())[str(getattr(step.op, "value", step.op))] += 1
        elif (diagnostic := event.diagnostic_event) is not None and diagnostic.severity == "error":
            self.errors.append(_one_line(f"{_resource_of(diagnostic.urn)}{diagnostic.message}"))
        elif (policy := event.policy_event) is not None and policy.enforcement_level == "mandatory":
            self.violations.append(_one_line(f"policy {policy.policy_name}: {_resource_of(policy.resource_urn)}"
                                             f"{policy.message}"))

    def plan(self) -> dict[str, dict[str, int]]:
        return {kind: dict(sorted(ops.items())) for kind, ops in sorted(self.by_type.items())}


def _resource_of(urn: str | None) -> str:
    """`urn:pulumi:<stack>::<project>::<type chain>::<name>` -> `<type> <name>: `."""
    if not urn:
        return ""
    parts = urn.split("::")
    return f"{parts[-2].split('$')[-1]} {parts[-1]}: " if len(parts) >= 4 else f"{urn}: "


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def _interrupt_recorded() -> Iterator[list[int]]:
    """Ctrl-C reaches the engine too (same process group): it cancels and saves state. Here it is only recorded,
    so the engine's exit is waited for; a second Ctrl-C interrupts dcforge at once."""
    received: list[int] = []
    if sys.platform == "win32" or not _in_main_thread():
        yield received
        return

    def record(signum, frame):
        received.append(signum)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def run(operation: str, env_name: str, options: DeployOptions = DeployOptions(), *, stacks_dir: Path | None = None,
        on_output: Callable[[str], Any] | None = print, find: Callable[[], Engine] = find_engine) -> DeployResult:
    """Preview, update or destroy stack `env_name` with the real engine.

    The spec is validated first (preview and up), so a bad spec changes nothing. Raises `DcforgeError` (exit 2)
    for bad input or a missing engine, `DeployFailed` (exit 1) when the engine fails, `DeployInterrupted` (130).
    """
    from dcforge.checks import CATALOG
    from dcforge.paths import STACKS_DIR
    from dcforge.spec import environment_file, load_environment
    from dcforge.spec import stacks_dir as environments_dir

    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r} is not one of {OPERATIONS}")
    # The program (stacks/__main__.py, components, policy pack) is this checkout's; the environment file is found
    # like every command's (`$DCFORGE_STACKS_DIR`, ./stacks, the checkout's).
    stacks = Path(stacks_dir or STACKS_DIR).resolve()
    # an unknown name is the same one line as for every command: the file it looked for and the known names
    env_file = environment_file(env_name, Path(stacks_dir or environments_dir())).resolve()
    if operation != "destroy":  # destroy runs no program: a stack whose file no longer validates can still go
        load_environment(path=env_file, checks=CATALOG)
    engine = find()
    engine.kubernetes_provider()
    url = options.backend_url or default_backend_url(stacks)
    _check_secrets(options.secrets_provider)
    if url.startswith("file://"):
        _state_folder(url, stacks).mkdir(parents=True, exist_ok=True)
    workspace = prepare_workspace(stacks, env_file, _state_folder(url, stacks) / "workspaces" / env_name)

    from pulumi import automation as auto

    env_vars = {**engine.environment(), "PULUMI_BACKEND_URL": url}
    if options.kubeconfig:
        env_vars["KUBECONFIG"] = str(Path(options.kubeconfig).resolve())
    opts = auto.LocalWorkspaceOptions(work_dir=str(workspace), env_vars=env_vars,
                                      secrets_provider=options.secrets_provider,
                                      pulumi_command=auto.PulumiCommand(root=str(engine.root)))
    events = EngineEvents()
    packs = [str(stacks / POLICY_ANALYZER)] if options.policy_pack and operation != "destroy" else None
    started = time.monotonic()
    outputs: dict[str, Any] = {}
    with _interrupt_recorded() as interrupted:
        try:
            stack = auto.create_or_select_stack(stack_name=env_name, project_name=PROJECT_NAME,
                                                program=inline_program(stacks), opts=opts)
            if options.context:
                stack.set_config("kubernetes:context", auto.ConfigValue(options.context))
            common = dict(on_output=on_output, on_event=events, color="never")
            if operation == "preview":
                changes = dict(stack.preview(policy_packs=packs, refresh=options.refresh, diff=False,
                                             **common).change_summary)
            elif operation == "up":
                update = stack.up(policy_packs=packs, refresh=options.refresh, **common)
                changes = dict(update.summary.resource_changes or {})
                outputs = {name: "[secret]" if value.secret else value.value for name, value in update.outputs.items()}
            else:
                changes = dict(stack.destroy(refresh=options.refresh, **common).summary.resource_changes or {})
        except auto.CommandError as error:
            if interrupted:
                raise DeployInterrupted(
                    f"{operation} of stack {env_name!r} interrupted: the engine cancelled it and saved what it had "
                    f"done in {url}; run `dcforge {operation} --env {env_name}` again to continue") from None
            raise DeployFailed(f"{operation} of stack {env_name!r} failed: "
                               f"{failure_reason(events, str(error))}") from None
    return DeployResult(env_name, operation, url, options.secrets_provider, engine.versions(),
                        changes={str(getattr(k, 'value', k)): v for k, v in changes.items()},
                        by_type=events.plan(), duration_s=round(time.monotonic() - started, 2), outputs=outputs)


def failure_reason(events: EngineEvents, text: str) -> str:
    """The policy violations, else the first resource error, else the engine's last error line."""
    if events.violations:
        more = f" (and {len(events.violations) - 1} more)" if len(events.violations) > 1 else ""
        return f"refused by the policy pack: {events.violations[0]}{more}; nothing was changed"
    resource_errors = [line for line in events.errors if not line.startswith("pulumi:pulumi:Stack")]
    if resource_errors:
        return resource_errors[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return _one_line((errors or lines or ["no output"])[-1])


def summary_line(result: DeployResult) -> str:
    changes = ", ".join(f"{count} {operation}" for operation, count in sorted(result.changes.items()) if count)
    verb = {"preview": "preview of", "up": "updated", "destroy": "destroyed"}[result.operation]
    return (f"dcforge: {verb} stack {result.env_name!r} in {result.duration_s:.1f} s "
            f"({result.backend_url}): {changes or 'no changes'}")


def plan_lines(result: DeployResult) -> list[str]:
    """One line per resource type with what the engine did (or plans to do) to it."""
    width = max((len(kind) for kind in result.by_type), default=0)
    return [f"  {kind:<{width}}  " + ", ".join(f"{count} {op}" for op, count in ops.items())
            for kind, ops in result.by_type.items() if kind != STACK_TYPE]


def deploy_command(operation: str, env_name: str, options: DeployOptions = DeployOptions()) -> DeployResult:
    """`dcforge preview|up|destroy`: the engine's own output streamed, then the plan per resource type and one
    summary line."""
    result = run(operation, env_name, options)
    print(f"dcforge {operation}: per resource type")
    for line in plan_lines(result):
        print(line)
    print(summary_line(result))
    return result
