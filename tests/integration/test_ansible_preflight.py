"""Preflight: the playbooks' compatibility rules agree with `dcforge validate`, and a refused host is left exactly
as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from dcforge.provision import run_playbook, versions_extravars
from dcforge.spec import load_environment
from dcforge.spec.compat import table_path, version_problems
from dcforge.spec.models import Versions
from tests.integration.ansible_support import (chroot_host, fresh_rootfs, skip_unless_chroot_targets_possible,
                                               write_inventory)

pytestmark = pytest.mark.slow

GOOD = {"driver": "570.172.08", "cuda": "12.8", "nccl": "2.26.2", "containerToolkit": "1.17.8",
        "dcgm": "4.2.3", "gpuOperator": "v25.3.2"}
# (name, versions, environment kind): one per rule of the table, and a few that break several at once.
CASES = [
    ("compatible", GOOD, "dev"),
    ("fabric_manager_differs", {**GOOD, "fabricManager": "570.195.03"}, "dev"),
    ("cuda_too_new_for_driver", {**GOOD, "driver": "550.163.01", "cuda": "12.8"}, "dev"),
    ("cuda_unknown", {**GOOD, "cuda": "11.8"}, "dev"),
    ("nccl_not_built_for_cuda", {**GOOD, "nccl": "2.18.5"}, "dev"),
    ("nccl_unknown", {**GOOD, "nccl": "2.99.1"}, "dev"),
    ("unknown_branch", {**GOOD, "driver": "600.10.01"}, "dev"),
    ("feature_branch_in_prod", {**GOOD, "driver": "575.64.05", "gpuOperator": "v25.3.2"}, "prod"),
    ("feature_branch_in_dev", {**GOOD, "driver": "575.64.05", "gpuOperator": "v25.3.2"}, "dev"),
    ("operator_not_validated", {**GOOD, "gpuOperator": "v24.9.2"}, "dev"),
    ("everything_wrong", {**GOOD, "driver": "545.29.06", "cuda": "13.0", "nccl": "2.18.5",
                          "fabricManager": "545.29.02", "gpuOperator": "v26.1.0"}, "prod"),
]

PARITY_PLAYBOOK = """
- name: Evaluate the preflight compatibility rules for every case
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Evaluate one case
      ansible.builtin.include_tasks: {case_tasks}
      loop: "{{{{ parity_cases }}}}"
      loop_control:
        loop_var: parity_case
    - name: Report the problems of every case
      ansible.builtin.debug:
        var: parity_results
"""
CASE_TASKS = """
- name: Run the compatibility tasks of the preflight role
  ansible.builtin.include_role:
    name: preflight
    tasks_from: compatibility.yml
  vars:
    preflight_versions: "{{ parity_case.versions }}"
    preflight_environment_kind: "{{ parity_case.kind }}"
- name: Keep this case's problems
  ansible.builtin.set_fact:
    parity_results: "{{ parity_results | default({}) | combine({parity_case.name: preflight_version_problems}) }}"
"""


def test_preflight_rules_agree_with_dcforge_validate(tmp_path):
    """The same table file, the same verdicts and messages, for every rule."""
    (tmp_path / "case.yml").write_text(CASE_TASKS)
    playbook = tmp_path / "parity.yml"
    playbook.write_text(PARITY_PLAYBOOK.format(case_tasks=tmp_path / "case.yml"))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}))
    cases = [{"name": name, "versions": versions, "kind": kind} for name, versions, kind in CASES]
    run = run_playbook(playbook, inventory, {"parity_cases": cases}, timeout_s=300)
    assert run.succeeded, run.stdout[-3000:]
    reported = next(event["event_data"]["res"]["parity_results"] for event in run.events
                    if event["event"] == "runner_on_ok"
                    and event["event_data"].get("task") == "Report the problems of every case")
    for name, versions, kind in CASES:
        expected = [{"key": key, "message": message}
                    for key, message in version_problems(Versions.model_validate(versions), [], prod=kind == "prod")]
        assert (reported[name] or []) == expected, name
    assert reported["compatible"] in (None, [])
    assert len(reported["everything_wrong"]) == 5


def _snapshot(rootfs: Path) -> dict[str, tuple]:
    """Every file under the target's system directories with size, mtime and mode."""
    state = {}
    for top in ("etc", "usr", "var/lib", "opt", "boot"):
        for path in (rootfs / top).rglob("*"):
            if path.is_symlink():
                state[str(path.relative_to(rootfs))] = ("link", os.readlink(path))
            else:
                stat = path.stat()
                state[str(path.relative_to(rootfs))] = (stat.st_size, stat.st_mtime_ns, stat.st_mode)
    return state


def test_preflight_refuses_incompatible_versions_without_changing_the_host(tmp_path):
    skip_unless_chroot_targets_possible()
    rootfs = fresh_rootfs(tmp_path / "rootfs")
    inventory = write_inventory(tmp_path / "inventory.yml", {"gpu-image": chroot_host(rootfs)}, {
        "dcforge_image_build": True, "preflight_require_nvidia_gpu": False,
        "preflight_require_kernel_headers": False, "preflight_min_free_disk_gib": 10**9,
    })
    extravars = versions_extravars(load_environment("dev"))
    extravars["dcforge_versions"] = {**extravars["dcforge_versions"], "fabricManager": "570.195.03", "cuda": "13.0"}
    before = _snapshot(rootfs)
    run = run_playbook("site.yml", inventory, extravars, timeout_s=300)
    assert run.failed_hosts == ["gpu-image"]
    assert run.changed == {}
    assert _snapshot(rootfs) == before
    assert "fabric manager 570.195.03 must equal the driver version 570.172.08 exactly" in run.stdout
    assert "CUDA 13.0 needs driver >= 580.65.06, but driver is 570.172.08" in run.stdout
    assert "NCCL 2.26.2 is built for CUDA 12.2..12.9, not CUDA 13.0" in run.stdout
    assert "GiB free under /usr, need 1000000000" in run.stdout
    # It stopped in preflight: no other role ran a single task.
    roles = {event["event_data"].get("role") for event in run.events}
    assert roles <= {"preflight", None}, roles


def test_preflight_default_table_is_the_one_dcforge_validate_reads():
    defaults = yaml.safe_load((Path(table_path()).parents[3] / "playbooks/roles/preflight/defaults/main.yml")
                              .read_text())
    role_path = Path(table_path()).parents[3] / "playbooks/roles/preflight"
    default = defaults["preflight_compatibility_table"].replace("{{ role_path }}", str(role_path))
    assert Path(default).resolve() == Path(table_path()).resolve()
