"""Preflight refuses, through real ansible-playbook, what dcforge's compatibility verdict refuses, and versions the
verdict was not computed for; a refused host is left exactly as it was. The rules themselves exist only in
dcforge.spec.compat (their unit tests are in tests/unit/test_ansible_inventories.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcforge.inventory import INVENTORIES_DIR, compatibility_verdict, versions_vars
from dcforge.paths import PLAYBOOKS_DIR
from dcforge.provision import run_playbook, versions_extravars
from dcforge.spec import load_environment
from dcforge.spec.models import Versions
from tests.integration.ansible_support import (chroot_host, fresh_rootfs, skip_unless_chroot_targets_possible,
                                               write_inventory)

pytestmark = pytest.mark.slow

# What a chroot build target cannot offer (no GPU on the PCI bus, no headers for the build machine's kernel).
IMAGE_BUILD_VARS = {"dcforge_image_build": True, "preflight_require_nvidia_gpu": False,
                    "preflight_require_kernel_headers": False, "preflight_require_nvswitch": False}


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


def test_preflight_refuses_the_verdicts_problems_without_changing_the_host(tmp_path):
    """dcforge provision's extravars carry the verdict dcforge.spec.compat gives these versions; preflight lists
    every problem in it, plus its own host checks, and stops before any other role runs."""
    skip_unless_chroot_targets_possible()
    rootfs = fresh_rootfs(tmp_path / "rootfs")
    inventory = write_inventory(tmp_path / "inventory.yml", {"gpu-image": chroot_host(rootfs)},
                                {**IMAGE_BUILD_VARS, "preflight_min_free_disk_gib": 10**9})
    loaded = load_environment("dev")
    extravars = versions_extravars(loaded)
    bad = Versions.model_validate({**extravars["dcforge_versions"], "fabricManager": "570.195.03", "cuda": "13.0"})
    extravars["dcforge_versions"] = versions_vars(bad)
    extravars["dcforge_compatibility"] = compatibility_verdict(bad, ["H100-SXM", "L4"], prod=False)
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


@pytest.fixture
def generated_inventory(tmp_path):
    """The checked-in, generated dev inventory with a chroot as the one node of pool train-h100: the group_vars
    (versions, verdict, pool facts) are the generated files themselves."""
    skip_unless_chroot_targets_possible()
    rootfs = fresh_rootfs(tmp_path / "rootfs")
    inventory = tmp_path / "inventory"
    shutil.copytree(INVENTORIES_DIR / "dev" / "group_vars", inventory / "group_vars")
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {"children": {
        "pool_train_h100": {"hosts": {"gpu-image": {**chroot_host(rootfs), **IMAGE_BUILD_VARS,
                                                    "preflight_min_free_disk_gib": 1}}}}}}}}))
    return {"rootfs": rootfs, "inventory": inventory}


def _plain_ansible_playbook(inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    """`ansible-playbook gpu-node.yml --tags preflight` from playbooks/, as an operator without dcforge runs it."""
    binary = Path(sys.executable).parent / "ansible-playbook"
    env = {**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOKS_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(binary), "-i", str(inventory), "gpu-node.yml", "--tags", "preflight", *extra],
                          cwd=PLAYBOOKS_DIR, env=env, capture_output=True, text=True, timeout=300)


def test_plain_ansible_playbook_accepts_the_generated_inventory(generated_inventory):
    completed = _plain_ansible_playbook(generated_inventory["inventory"])
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "preflight passed: driver 570.172.08, CUDA 12.8, NCCL 2.26.2" in output


def test_plain_ansible_playbook_refuses_versions_dcforge_did_not_check(generated_inventory, tmp_path):
    """Overriding the pins on the command line bypasses dcforge's verdict, so preflight refuses on its own."""
    versions = {**yaml.safe_load((INVENTORIES_DIR / "dev/group_vars/all/dcforge.yml").read_text())[
        "dcforge_versions"], "cuda": "13.0"}
    (tmp_path / "override.json").write_text(json.dumps({"dcforge_versions": versions}))
    before = _snapshot(generated_inventory["rootfs"])
    completed = _plain_ansible_playbook(generated_inventory["inventory"], "-e", f"@{tmp_path / 'override.json'}")
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output[-4000:]
    assert "preflight refused gpu-image" in output
    assert "are not the versions dcforge checked" in output and '"cuda": "13.0"' in output
    assert _snapshot(generated_inventory["rootfs"]) == before


def test_plain_ansible_playbook_refuses_without_a_verdict(generated_inventory):
    (generated_inventory["inventory"] / "group_vars/all/dcforge.yml").write_text(yaml.safe_dump(
        {"dcforge_versions": load_environment("dev").raw_config["versions"]}))
    completed = _plain_ansible_playbook(generated_inventory["inventory"])
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output[-4000:]
    assert "no compatibility verdict from dcforge" in output
