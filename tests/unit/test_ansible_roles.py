"""Role conventions (geerlingguy style) and the air-gap rule: every download location is a variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dcforge.provision import PLAYBOOKS_DIR

ROLES = sorted(p.name for p in (PLAYBOOKS_DIR / "roles").iterdir() if p.is_dir())
PLATFORMS = ["Debian-12", "Ubuntu-22", "Ubuntu-24", "RedHat-9"]
URL = re.compile(r"\b(?:https?|ftp)://")


def test_the_issue_roles_exist():
    assert {"preflight", "nvidia_driver", "cuda_toolkit", "nccl", "nvidia_container_toolkit", "fabric_manager",
            "dcgm", "rdma", "node_tuning", "node_acceptance", "nvidia_repository"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_role_layout_and_prefixed_documented_defaults(role):
    root = PLAYBOOKS_DIR / "roles" / role
    for required in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "meta/argument_specs.yml", "README.md"):
        assert (root / required).is_file(), required
    defaults = yaml.safe_load((root / "defaults/main.yml").read_text()) or {}
    readme = (root / "README.md").read_text()
    specs = yaml.safe_load((root / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    for name in defaults:
        assert name.startswith(f"{role}_"), name
        assert f"`{name}`" in readme, f"{name} missing from {role}/README.md"
        assert name in specs, f"{name} missing from {role}/meta/argument_specs.yml"


# (distribution, OS family, major version) of each supported platform, as Ansible's facts name them.
PLATFORM_FACTS = {"Debian-12": ("Debian", "Debian", "12"), "Ubuntu-22": ("Ubuntu", "Debian", "22"),
                  "Ubuntu-24": ("Ubuntu", "Debian", "24"), "RedHat-9": ("RedHat", "RedHat", "9")}
# The fallback every role's `first_found` walks: distribution -> OS family -> default.
FALLBACK = ["{distribution}-{major}.yml", "{distribution}.yml", "{family}-{major}.yml", "{family}.yml", "default.yml"]
OS_VARS_ROLES = [r for r in ROLES if (PLAYBOOKS_DIR / "roles" / r / "vars").is_dir() and r != "pinned_packages"]


def test_platforms_are_the_ones_preflight_supports():
    defaults = yaml.safe_load((PLAYBOOKS_DIR / "roles/preflight/defaults/main.yml").read_text())
    assert sorted(defaults["preflight_supported_platforms"]) == sorted(PLATFORM_FACTS) == sorted(PLATFORMS)


@pytest.mark.parametrize("role", OS_VARS_ROLES)
def test_os_variables_resolve_for_every_supported_platform(role):
    """The role's `first_found` list is the shared fallback, and it finds a file for every platform."""
    vars_dir = PLAYBOOKS_DIR / "roles" / role / "vars"
    tasks = yaml.safe_load((PLAYBOOKS_DIR / "roles" / role / "tasks" / "main.yml").read_text())
    lookup = next(task for task in tasks if "ansible.builtin.include_vars" in task)
    files = next(iter(lookup["vars"].values()))["files"]
    fact = {"distribution": "{{ ansible_facts['distribution'] }}", "family": "{{ ansible_facts['os_family'] }}",
            "major": "{{ ansible_facts['distribution_major_version'] }}"}
    assert files == [pattern.format(**fact) for pattern in FALLBACK]
    for platform, (distribution, family, major) in PLATFORM_FACTS.items():
        found = [name for pattern in FALLBACK
                 if (vars_dir / (name := pattern.format(distribution=distribution, family=family, major=major))).is_file()]
        assert found, f"{role}: no variables for {platform}"


@pytest.mark.parametrize("role", OS_VARS_ROLES)
def test_no_two_os_variable_files_of_a_role_are_identical(role):
    """Identical files collapse into the more general level of the fallback (OS family or default)."""
    texts = [path.read_text() for path in (PLAYBOOKS_DIR / "roles" / role / "vars").glob("*.yml")
             if path.name != "main.yml"]
    assert len(texts) == len(set(texts))


def test_every_task_name_is_a_sentence():
    for path in (PLAYBOOKS_DIR / "roles").glob("*/*/*.yml"):
        if path.parent.name not in ("tasks", "handlers"):
            continue
        for task in yaml.safe_load(path.read_text()) or []:
            name = task.get("name", "")
            assert name and name[0].isupper(), f"{path}: {task}"


def test_no_download_location_is_hard_coded_outside_defaults():
    """Air-gapped sites override defaults; a URL in tasks, vars or templates could not be overridden."""
    offenders = []
    for path in list((PLAYBOOKS_DIR / "roles").rglob("*")) + list(PLAYBOOKS_DIR.glob("*.yml")):
        if path.is_file() and "defaults" not in path.parts and path.suffix in (".yml", ".j2") and \
                URL.search(re.sub(r"(?m)^\s*#.*$", "", path.read_text())):
            offenders.append(str(path.relative_to(PLAYBOOKS_DIR)))
    assert offenders == []


def test_no_role_names_this_machine():
    """Nothing in the playbooks refers to the machine the tests run on (its kernel, mirror or paths)."""
    import os

    text = "\n".join(p.read_text() for p in PLAYBOOKS_DIR.rglob("*") if p.is_file())
    assert os.uname().release not in text
    assert "/work/" not in text and "127.0.0.1" not in text
