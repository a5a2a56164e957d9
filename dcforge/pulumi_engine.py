"""The Pulumi engine dcforge drives: where it is, which versions it is, the environment it runs in.

`make pulumi-tools` (tools/pulumi/build.sh) builds the Pulumi CLI and the Kubernetes resource provider from the Go
module versions pinned in tools/pulumi/*/go.mod into `$DCFORGE_PULUMI_HOME/bin` (default ~/.cache/dcforge-pulumi),
and records their versions in `versions` beside it.
That folder wins; otherwise a `pulumi` on PATH or in ~/.pulumi/bin (the upstream installer's place) is used.
No Python language host is needed: dcforge runs the stack as an Automation API inline program, whose language
host is the `pulumi` Python package in this process, and the policy pack goes to the engine as an executable
(stacks/policy/analyzer) that it runs itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dcforge.errors import DcforgeError
from dcforge.paths import REPO_ROOT

PULUMI_HOME_ENV = "DCFORGE_PULUMI_HOME"
DEFAULT_PULUMI_HOME = Path("~/.cache/dcforge-pulumi")
VERSIONS_FILE = "versions"
"""`name=version` lines that tools/pulumi/build.sh writes for what it built."""
PYTHON_PACKAGES = ("pulumi", "pulumi_kubernetes", "pulumi_policy")
PROVIDER = "pulumi-resource-kubernetes"


def pulumi_home() -> Path:
    """`$DCFORGE_PULUMI_HOME`, else ~/.cache/dcforge-pulumi: the folder `make pulumi-tools` builds into."""
    return Path(os.environ.get(PULUMI_HOME_ENV) or DEFAULT_PULUMI_HOME).expanduser()


def build_hint(home: Path) -> str:
    return (f"no Pulumi engine found (no 'pulumi' in {home / 'bin'}, on PATH or in ~/.pulumi/bin): build it with "
            f"'make pulumi-tools' (Go and the Go module proxy; into ${PULUMI_HOME_ENV}, default "
            f"{DEFAULT_PULUMI_HOME}) or install the Pulumi CLI and its kubernetes plugin, then re-run")


@dataclass(frozen=True)
class Engine:
    """A Pulumi CLI and the folder of plugins beside it (the Automation API puts that folder first on PATH, so
    the Kubernetes provider built there is the one the engine loads)."""

    cli: Path

    @property
    def bin_dir(self) -> Path:
        return self.cli.parent

    @property
    def root(self) -> Path:
        """What `pulumi.automation.PulumiCommand(root=...)` expects: the folder above bin/."""
        return self.cli.parent.parent

    def kubernetes_provider(self) -> Path:
        """The Kubernetes resource provider the engine will load: beside the CLI (the Automation API puts that
        folder first on PATH), else on PATH, else in the engine's plugin cache. `DcforgeError` (exit 2) when none:
        the engine would try to download it, and no plugin server can be reached from a cluster's admin network."""
        beside = self.bin_dir / PROVIDER
        if beside.is_file():
            return beside
        if found := shutil.which(PROVIDER):
            return Path(found)
        plugins = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi") / "plugins"
        for cached in sorted(plugins.glob(f"resource-kubernetes-v*/{PROVIDER}"), reverse=True):
            return cached
        raise DcforgeError(f"no Kubernetes provider for the Pulumi engine {self.cli} ({PROVIDER} beside it, on "
                           f"PATH or in {plugins}): build both with 'make pulumi-tools', then re-run")

    def environment(self) -> dict[str, str]:
        """Variables the engine and its plugins need: the policy pack's analyzer runs with this interpreter and
        imports dcforge from this checkout."""
        python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {"PULUMI_PYTHON_CMD": sys.executable, "PYTHONPATH": python_path, "PULUMI_SKIP_UPDATE_CHECK": "true"}

    def versions(self) -> dict[str, str]:
        """Engine, provider and Python SDK versions, for the report's deploy section."""
        built = read_versions(self.bin_dir.parent / VERSIONS_FILE)
        found = {"pulumi": built.get("pulumi") or self._cli_version()}
        found[PROVIDER] = built.get(PROVIDER) or f"unknown ({self.kubernetes_provider()})"
        for package in PYTHON_PACKAGES:
            try:
                found[f"python:{package}"] = metadata.version(package)
            except metadata.PackageNotFoundError:
                found[f"python:{package}"] = "not installed"
        return found

    def _cli_version(self) -> str:
        try:
            done = subprocess.run([str(self.cli), "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"unknown ({error})"
        return done.stdout.strip() or "unknown"


def read_versions(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name.strip(): version.strip() for name, version in pairs}


def find_engine(home: Path | None = None, search_path: str | None = None) -> Engine:
    """The engine of `make pulumi-tools` when built, else a Pulumi CLI on PATH or in ~/.pulumi/bin.

    Raises `DcforgeError` (exit 2) with how to build one when there is none.
    """
    home = home if home is not None else pulumi_home()
    candidates = [home / "bin" / "pulumi"]
    if found := shutil.which("pulumi", path=search_path):
        candidates.append(Path(found))
    candidates.append(Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi") / "bin" / "pulumi")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Engine(candidate)
    raise DcforgeError(build_hint(home))
