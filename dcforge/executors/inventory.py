"""Hosts for the `hosts` acceptance target, from `acceptance.hosts` in the environment file or an Ansible inventory.

The inventory is the one `dcforge provision` uses (playbooks/inventories/<env>/hosts.yml): YAML groups with
`hosts:` and `children:`, numeric ranges (`gpu-[01:64]`), and the usual connection variables per host:
`ansible_host`, `ansible_port`, `ansible_user`, `ansible_ssh_private_key_file`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dcforge.errors import ConfigError
from dcforge.executors.hosts import Host

RANGE = re.compile(r"\[(\d+):(\d+)\]")


def expand_range(pattern: str) -> list[str]:
    """`gpu-[01:03]` -> gpu-01, gpu-02, gpu-03 (zero padding kept, as Ansible does)."""
    match = RANGE.search(pattern)
    if not match:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    names = []
    for number in range(int(first), int(last) + 1):
        names.extend(expand_range(pattern[:match.start()] + str(number).zfill(width) + pattern[match.end():]))
    return names


def _walk(group: dict[str, Any] | None, name: str, wanted: str | None, inside: bool,
          found: dict[str, dict[str, Any]]) -> bool:
    """Collect hosts (name -> vars) of `wanted` (every group when None); returns whether `wanted` was seen."""
    group = group or {}
    inside = inside or wanted is None or name == wanted
    seen = name == wanted
    for pattern, host_vars in (group.get("hosts") or {}).items():
        for host in expand_range(str(pattern)):
            if inside:
                found.setdefault(host, {}).update(host_vars or {})
    for child_name, child in (group.get("children") or {}).items():
        seen = _walk(child, child_name, wanted, inside, found) or seen
    return seen


def inventory_hosts(path: Path, group: str | None, key: str, env_file: Path | str | None = None) -> list[Host]:
    """Hosts of `group` (all hosts when None) in the inventory file, in file order."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(env_file, key, f"cannot read inventory {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ConfigError(env_file, key, f"inventory {path} is not YAML{where}: {problem}") from None
    if not isinstance(document, dict) or "all" not in document:
        raise ConfigError(env_file, key, f"inventory {path} has no `all` group")
    found: dict[str, dict[str, Any]] = {}
    if not _walk(document["all"], "all", group, False, found) and group is not None:
        raise ConfigError(env_file, key, f"inventory {path} has no group {group!r}")
    hosts = []
    for name, host_vars in found.items():
        if host_vars.get("ansible_connection") == "local":
            raise ConfigError(env_file, key, f"inventory {path}: host {name} uses ansible_connection local; "
                                             "the hosts target reaches every host over SSH")
        key_file = host_vars.get("ansible_ssh_private_key_file")
        hosts.append(Host(name=name, address=str(host_vars.get("ansible_host", name)),
                          port=int(host_vars.get("ansible_port", 22)), user=host_vars.get("ansible_user"),
                          identity_file=str(key_file) if key_file else None))
    if not hosts:
        raise ConfigError(env_file, key, f"inventory {path} lists no hosts" + (f" in group {group!r}" if group else ""))
    return hosts


def acceptance_hosts(env) -> list[Host]:
    """The hosts of `dcforge:acceptance.hosts` of a LoadedEnvironment, with the section's defaults applied;
    relative paths are relative to the environment file."""
    section = env.spec.acceptance.hosts
    key = "dcforge:acceptance.hosts"
    if section is None:
        raise ConfigError(env.path, key, "missing: list the hosts, or name an inventory")
    base = Path(env.path).parent

    def local_path(value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)

    if section.inventory:
        hosts = inventory_hosts(Path(local_path(section.inventory)), section.group, f"{key}.inventory", env.path)
    else:
        hosts = [Host(name=h.name, address=h.address or h.name, port=h.port, user=h.user,
                      identity_file=local_path(h.identity_file)) for h in section.hosts]
    return [Host(name=h.name, address=h.address, port=h.port, user=h.user or section.user,
                 identity_file=local_path(h.identity_file) if h.identity_file else local_path(section.identity_file),
                 known_hosts_file=local_path(section.known_hosts_file)) for h in hosts]
