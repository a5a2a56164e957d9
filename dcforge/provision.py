"""`dcforge provision`: run the Ansible playbooks through ansible-runner with the environment's pinned versions.

The environment file is the single source of truth: its `dcforge:versions` reach the roles as the extravar
`dcforge_versions` (camelCase keys, as in the file) with their compatibility verdict `dcforge_compatibility`, the
same values `dcforge inventory` writes into `playbooks/inventories/<env>/group_vars`, so a plain `ansible-playbook`
run and a `dcforge provision` run install the same stack and refuse the same versions.

Every run gets a fresh private data dir and a unique ident: ansible-runner persists extravars in `env/` and
artefacts per ident, so reusing either would leak one run's pins into the next.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcforge.errors import ConfigError
from dcforge.inventory import (INVENTORIES_DIR, drifted_files, environment_verdict, inventory_files, slurm_vars,
                               source_name, versions_vars)
from dcforge.paths import PLAYBOOKS_DIR


# Ansible's per-host counters (`stats` keys) in the order the summary table shows them.
STAT_COLUMNS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
                "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}


@dataclass(frozen=True)
class HostSummary:
    """Ansible's recap line for one host."""

    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @property
    def status(self) -> str:
        """`unreachable`, `failed`, `changed` or `ok` -- the worst thing that happened to the host."""
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        return "changed" if self.changed else "ok"


@dataclass
class PlaybookRun:
    """The outcome of one ansible-runner run."""

    rc: int
    status: str
    """ansible-runner's status: successful, failed, timeout, canceled."""
    hosts: dict[str, HostSummary]
    events: list[dict[str, Any]] = field(default_factory=list)
    """Every task result event (`runner_on_*`), for callers that inspect what a task did."""
    stdout: str = ""

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(name for name, host in self.hosts.items() if host.status in ("failed", "unreachable"))

    @property
    def changed(self) -> dict[str, int]:
        """Hosts with changes (empty means the run was idempotent)."""
        return {name: host.changed for name, host in self.hosts.items() if host.changed}

    @property
    def succeeded(self) -> bool:
        return self.rc == 0 and not self.failed_hosts


def summarise_stats(stats: dict[str, dict[str, int]] | None) -> dict[str, HostSummary]:
    """ansible-runner `stats` ({counter: {host: n}}) -> one HostSummary per host."""
    stats = stats or {}
    hosts = sorted({host for counter in STAT_COLUMNS for host in (stats.get(counter) or {})}
                   | set(stats.get("processed") or {}))
    return {host: HostSummary(host, **{column: int((stats.get(counter) or {}).get(host, 0))
                                        for counter, column in STAT_COLUMNS.items()})
            for host in hosts}


def versions_extravars(loaded) -> dict[str, Any]:
    """The extravars a `LoadedEnvironment` gives the playbooks: pinned versions, their compatibility verdict
    and the environment kind (what `dcforge inventory` writes into group_vars/all)."""
    spec = loaded.spec
    return {
        "dcforge_versions": versions_vars(spec.versions),
        "dcforge_compatibility": environment_verdict(spec),
        "dcforge_environment_kind": spec.environment.kind,
        "dcforge_environment": spec.name,
        # target slurm: the cluster playbooks/slurm.yml configures (site.yml runs it when this is set)
        **({"dcforge_slurm": slurm_vars(spec)} if spec.acceptance.target == "slurm" else {}),
    }


def inventory_for(env: str, inventory: Path | None = None) -> Path:
    """An explicit inventory, else `playbooks/inventories/<env>/`."""
    path = Path(inventory) if inventory is not None else INVENTORIES_DIR / env
    if not path.exists():
        known = sorted(p.name for p in INVENTORIES_DIR.iterdir() if p.is_dir())
        raise ConfigError(path, None, f"no Ansible inventory for environment {env!r} "
                                      f"(inventories: {', '.join(known)}; or pass --inventory)")
    return path


def refuse_stale_inventory(loaded, inventory_path: Path) -> None:
    """The generated inventory must match the environment file: its hosts and pool facts are not passed as
    extravars, so a stale one would provision the wrong hosts or the wrong way."""
    drifted = drifted_files(inventory_path, inventory_files(loaded.spec, source_name(loaded.path)),
                            content_only=True)
    if drifted:
        raise ConfigError(inventory_path, None, f"differs from {loaded.path} ({', '.join(map(str, drifted))}): "
                                                f"run `dcforge inventory --env {loaded.spec.name}` first")


def _ansible_binary(name: str) -> str:
    """The ansible command beside this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ConfigError(None, None, f"{name} not found: install ansible (pip install ansible) in this environment")
    return found


def run_playbook(playbook: str | Path, inventory: Path, extravars: dict[str, Any], *, check: bool = False,
                 limit: str | None = None, tags: list[str] | None = None, skip_tags: list[str] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None, timeout_s: int = 3600) -> PlaybookRun:
    """Run one playbook of `playbooks/` (or an absolute path) in a fresh private data dir; never raises on
    host failures -- they are in the returned `PlaybookRun`."""
    import ansible_runner

    playbook_path = Path(playbook) if Path(playbook).is_absolute() else PLAYBOOKS_DIR / playbook
    if not playbook_path.is_file():
        raise ConfigError(playbook_path, None, "no such playbook")
    private_data_dir = Path(tempfile.mkdtemp(prefix="dcforge-ansible-"))
    ident = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    events: list[dict[str, Any]] = []

    def handle(event: dict[str, Any]) -> bool:
        if str(event.get("event", "")).startswith("runner_on_"):
            events.append(event)
        if on_event:
            on_event(event)
        return True

    binary_dir = str(Path(_ansible_binary("ansible-playbook")).parent)
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private_data_dir), ident=ident, project_dir=str(PLAYBOOKS_DIR),
            playbook=str(playbook_path), inventory=str(Path(inventory).resolve()), extravars=extravars,
            limit=limit, tags=",".join(tags) if tags else None, skip_tags=",".join(skip_tags) if skip_tags else None,
            cmdline="--check" if check else None,
            envvars={"ANSIBLE_CONFIG": str(PLAYBOOKS_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                     "PATH": f"{binary_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
            event_handler=handle, quiet=True, timeout=timeout_s,
        )
        stdout = runner.stdout.read() if runner.stdout else ""
        return PlaybookRun(rc=int(runner.rc if runner.rc is not None else 1), status=str(runner.status),
                           hosts=summarise_stats(runner.stats), events=events, stdout=stdout)
    finally:
        shutil.rmtree(private_data_dir, ignore_errors=True)


def progress_line(event: dict[str, Any]) -> str | None:
    """One live line per host and task (skips are left out), or None for events that are not results."""
    kind = event.get("event", "")
    data = event.get("event_data", {})
    host, task = data.get("host", "?"), data.get("task", "")
    role = f"{data['role']} : " if data.get("role") else ""
    result = data.get("res") or {}
    if kind == "runner_on_ok":
        if str(data.get("task_action", "")).endswith("validate_argument_spec"):
            return None  # one per role and always ok when it gets that far: noise in the live view
        state = "changed" if result.get("changed") else "ok"
    elif kind == "runner_on_failed":
        if data.get("ignore_errors"):
            return None
        state = "FAILED"
    elif kind == "runner_on_unreachable":
        state = "UNREACHABLE"
    else:
        return None
    line = f"{state:<11} {host:<24} {role}{task}"
    if state in ("FAILED", "UNREACHABLE") and result.get("msg"):
        line += f" -- {str(result['msg']).strip().splitlines()[0][:300]}"
    return line


def summary_table(run: PlaybookRun, title: str):
    """A rich Table with one row per host: the Ansible recap counters and the host's status."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("host", no_wrap=True, min_width=max((len(name) for name in run.hosts), default=4))
    for column in STAT_COLUMNS.values():
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("status", no_wrap=True, min_width=len("unreachable"))
    colours = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "magenta"}
    for name, host in sorted(run.hosts.items()):
        table.add_row(name, *(str(getattr(host, column)) for column in STAT_COLUMNS.values()),
                      f"[{colours[host.status]}]{host.status}[/]")
    return table


def provision_command(env: str = "local", *, check: bool = False, limit: str | None = None,
                      tags: list[str] | None = None, inventory: Path | None = None, playbook: str = "site.yml",
                      env_file: Path | None = None, console=None) -> int:
    """Provision the hosts of an environment; returns the exit code (0 all hosts fine, 1 some host failed or
    was unreachable). Bad input raises `ConfigError` (exit 2)."""
    from rich.console import Console

    from dcforge.checks import CATALOG
    from dcforge.spec import load_environment

    console = console or Console(soft_wrap=True)
    loaded = load_environment(None if env_file else env, path=env_file, checks=CATALOG)
    inventory_path = inventory_for(loaded.spec.name, inventory)
    if inventory is None:
        refuse_stale_inventory(loaded, inventory_path)
    extravars = versions_extravars(loaded)
    versions = extravars["dcforge_versions"]
    console.print(f"dcforge provision: environment [bold]{loaded.spec.name}[/] ({loaded.path}), inventory "
                  f"{inventory_path}, playbook {playbook}{' (check mode)' if check else ''}"
                  f"{f', limit {limit}' if limit else ''}{', tags ' + ','.join(tags) if tags else ''}")
    console.print("pinned: " + ", ".join(f"{key} {value}" for key, value in versions.items()))

    def live(event: dict[str, Any]) -> None:
        if (line := progress_line(event)) is not None:
            console.print(line, markup=False, highlight=False)

    run = run_playbook(playbook, inventory_path, extravars, check=check, limit=limit, tags=tags, on_event=live)
    if not run.hosts:
        # No recap at all: ansible-playbook stopped before any host ran (bad inventory, syntax error, no match).
        console.print(run.stdout[-3000:], markup=False, highlight=False)
        console.print(f"[red]provision failed[/]: ansible-playbook exited {run.rc} before any host ran "
                      "(no host matched, or the inventory or playbook is broken)")
        return 1
    console.print(summary_table(run, f"provision {loaded.spec.name}{' (check mode)' if check else ''}"))
    if run.succeeded:
        console.print(f"[green]provisioned[/] {len(run.hosts)} host(s)")
        return 0
    failed = run.failed_hosts
    reasons = ", ".join(f"{name} ({run.hosts[name].status})" for name in failed)
    console.print(f"[red]provision failed[/] on {len(failed)} host(s): {reasons or f'ansible exit {run.rc}'}")
    return 1
