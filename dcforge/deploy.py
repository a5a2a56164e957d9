"""`dcforge up|preview --env X`: run the `stacks/` Pulumi program through the Automation API.

The stack is the environment name (`stacks/Pulumi.<env>.yaml` is its config). State goes to a local file backend
by default, so no Pulumi Cloud account is needed: `$PULUMI_BACKEND_URL` if set, else `file://<repo>/.pulumi-state`
when the checkout is writable, else `file://~/.dcforge/pulumi`. The CrossGuard pack in `stacks/policy/` runs with
every preview and update, so the compliance rules gate the deployment.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcforge.errors import DcforgeError

INSTALL_HINT = (
    "the Pulumi CLI is not installed (no 'pulumi' on PATH or in ~/.pulumi/bin): install it with "
    "'curl -fsSL https://get.pulumi.com | sh' (see https://www.pulumi.com/docs/install/), then re-run"
)
PASSPHRASE_HINT = (
    "the local Pulumi backend encrypts stack secrets with a passphrase: set PULUMI_CONFIG_PASSPHRASE "
    "(or PULUMI_CONFIG_PASSPHRASE_FILE) and re-run; an empty value is allowed for throw-away stacks"
)
STATE_DIR_NAME = ".pulumi-state"
USER_STATE_DIR = Path("~/.dcforge/pulumi")


class DeployFailed(DcforgeError):
    """Pulumi ran and the preview/update failed (a resource or policy error, not bad input)."""

    exit_code = 1


@dataclass(frozen=True)
class DeployResult:
    """What one `dcforge up|preview` did."""

    env_name: str
    preview: bool
    backend_url: str
    changes: dict[str, int] = field(default_factory=dict)
    """Operation -> resource count, e.g. {"create": 42, "same": 3}."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """Stack outputs after an update (empty for a preview)."""


def find_pulumi_cli(search_path: str | None = None, home: Path | None = None) -> Path:
    """The `pulumi` executable: on PATH, else in `$PULUMI_HOME/bin` or `~/.pulumi/bin` (the installer's place)."""
    found = shutil.which("pulumi", path=search_path)
    if found:
        return Path(found)
    homes = [Path(os.environ["PULUMI_HOME"])] if os.environ.get("PULUMI_HOME") else []
    homes.append(home or Path.home() / ".pulumi")
    for pulumi_home in homes:
        candidate = pulumi_home / "bin" / "pulumi"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise DcforgeError(INSTALL_HINT)


def default_backend_url(stacks_dir: Path) -> str:
    """`$PULUMI_BACKEND_URL`, else a state folder beside the stacks (if writable), else one in the home dir."""
    if url := os.environ.get("PULUMI_BACKEND_URL"):
        return url
    repo = stacks_dir.resolve().parent
    if os.access(repo, os.W_OK):
        return f"file://{repo / STATE_DIR_NAME}"
    return f"file://{USER_STATE_DIR.expanduser()}"


def _prepare_backend(url: str) -> None:
    if url.startswith("file://"):
        Path(url.removeprefix("file://")).expanduser().mkdir(parents=True, exist_ok=True)
        if "PULUMI_CONFIG_PASSPHRASE" not in os.environ and "PULUMI_CONFIG_PASSPHRASE_FILE" not in os.environ:
            raise DcforgeError(PASSPHRASE_HINT)


def up(env_name: str, preview: bool = False, *, stacks_dir: Path | None = None, backend_url: str | None = None,
       policy_pack: bool = True, on_output: Callable[[str], Any] | None = print,
       find_cli: Callable[[], Path] = find_pulumi_cli) -> DeployResult:
    """Preview or update stack `env_name`; the spec is validated first, so a bad spec creates nothing.

    Raises `DcforgeError` (exit 2) for bad input or a missing CLI, `DeployFailed` (exit 1) when Pulumi fails.
    """
    from dcforge.checks import CATALOG
    from dcforge.spec import load_environment, stacks_dir as default_stacks_dir

    stacks = Path(stacks_dir) if stacks_dir is not None else default_stacks_dir()
    loaded = (load_environment(path=stacks / f"Pulumi.{env_name}.yaml", checks=CATALOG) if stacks_dir
              else load_environment(env_name, checks=CATALOG))
    cli = find_cli()
    url = backend_url or default_backend_url(stacks)
    _prepare_backend(url)

    from pulumi import automation as auto

    workspace = auto.LocalWorkspaceOptions(
        work_dir=str(stacks),
        env_vars={"PULUMI_BACKEND_URL": url, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        pulumi_command=auto.PulumiCommand(root=str(cli.parent.parent)),
    )
    packs = [str(stacks / "policy")] if policy_pack else None
    try:
        stack = auto.create_or_select_stack(stack_name=loaded.spec.name, work_dir=str(stacks), opts=workspace)
        if preview:
            result = stack.preview(on_output=on_output, policy_packs=packs, diff=False)
            return DeployResult(env_name, True, url, changes=dict(result.change_summary))
        update = stack.up(on_output=on_output, policy_packs=packs)
    except auto.CommandError as error:
        raise DeployFailed(f"pulumi {'preview' if preview else 'up'} of stack {env_name!r} failed: "
                           f"{_last_error_line(str(error))}") from None
    changes = dict(update.summary.resource_changes or {})
    return DeployResult(env_name, False, url, changes=changes,
                        outputs={name: value.value for name, value in update.outputs.items()})


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1]


def deploy_command(env_name: str, preview: bool, policy_pack: bool = True) -> int:
    """`dcforge up|preview`: stream Pulumi's output, then one summary line; returns the exit code (0)."""
    result = up(env_name, preview, policy_pack=policy_pack)
    changes = ", ".join(f"{count} {operation}" for operation, count in sorted(result.changes.items()) if count)
    verb = "preview of" if preview else "updated"
    print(f"dcforge: {verb} stack {env_name!r} ({result.backend_url}): {changes or 'no changes'}")
    return 0
