"""The Slurm roles (playbooks/slurm.yml) on a Debian 12 chroot: converge, idempotence, check mode, and what they
wrote: slurm.conf from the environment file (a partition per GPU pool, GPUs as GRES), gres.conf, cgroup.conf, one
munge key, the daemons enabled. The chroot is an image build (`dcforge_image_build`): services enabled, not started.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from dcforge.inventory import slurm_vars
from dcforge.provision import run_playbook, versions_extravars
from dcforge.spec import load_environment
from tests.integration.ansible_support import chroot_host, fresh_rootfs, skip_unless_chroot_targets_possible

pytestmark = pytest.mark.slow

ENV = "dev"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A fresh chroot (alias `slurm-image`): the controller and a compute node at once, with its inventory."""
    skip_unless_chroot_targets_possible()
    work = tmp_path_factory.mktemp("slurm-chroot")
    rootfs = fresh_rootfs(work / "rootfs")
    host = {"slurm-image": chroot_host(rootfs)}
    inventory = work / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"vars": {"dcforge_image_build": True}, "children": {
        "slurm_controller": {"hosts": host}, "gpu_nodes": {"hosts": host}}}}))
    return {"rootfs": rootfs, "inventory": inventory}


@pytest.fixture(scope="module")
def extravars() -> dict:
    loaded = load_environment(ENV)
    return {**versions_extravars(loaded), "dcforge_slurm": slurm_vars(loaded.spec)}


@pytest.fixture(scope="module")
def converged(node, extravars):
    first = run_playbook("slurm.yml", node["inventory"], extravars, timeout_s=900)
    assert first.succeeded, first.stdout[-4000:]
    second = run_playbook("slurm.yml", node["inventory"], extravars, timeout_s=600)
    return {"first": first, "second": second}


def test_slurm_conf_declares_every_pool_as_a_partition_with_its_gpus(converged, node, extravars):
    conf = (node["rootfs"] / "etc/slurm/slurm.conf").read_text()
    # dev's pools: 2 x 8 H100-SXM, 112 CPUs, 2048 GiB; 1 x 4 L4 (RealMemory: 95 % of the declared memory, in MiB)
    assert "NodeName=dev-gpu-01,dev-gpu-02 CPUs=112 RealMemory=1992294 Gres=gpu:h100_sxm:8 State=UNKNOWN" in conf
    assert "PartitionName=train-h100 Nodes=dev-gpu-01,dev-gpu-02 Default=YES" in conf
    assert "PartitionName=infer-l4 Nodes=dev-infer-l4-01 MaxTime" in conf
    assert "ProctrackType=proctrack/cgroup" in conf and "GresTypes=gpu" in conf
    gres = (node["rootfs"] / "etc/slurm/gres.conf").read_text()
    assert "NodeName=dev-gpu-01,dev-gpu-02 Name=gpu Type=h100_sxm File=/dev/nvidia[0-7]" in gres
    assert "ConstrainDevices=yes" in (node["rootfs"] / "etc/slurm/cgroup.conf").read_text()


def test_one_private_munge_key_and_the_daemons_enabled(converged, node):
    key = node["rootfs"] / "etc/munge/munge.key"
    # Debian's munge package creates a 128-byte key as it installs; the role keeps the controller's key as it is
    assert key.stat().st_size >= 32 and oct(key.stat().st_mode & 0o777) == "0o400"
    owner = subprocess.run(["chroot", str(node["rootfs"]), "stat", "-c", "%U", "/etc/munge/munge.key"],
                           capture_output=True, text=True, timeout=30).stdout.strip()
    assert owner == "munge"
    wants = node["rootfs"] / "etc/systemd/system/multi-user.target.wants"
    assert {"munge.service", "slurmctld.service", "slurmd.service"} <= {p.name for p in wants.iterdir()}
    assert "slurm_controller_munge_key" not in converged["first"].stdout  # the key is never logged
    assert key.read_bytes().hex() not in converged["first"].stdout


def test_second_run_changes_nothing(converged):
    assert converged["second"].succeeded
    assert converged["second"].changed == {}, converged["second"].stdout[-3000:]


def test_check_mode_is_clean_after_converge(converged, node, extravars):
    result = run_playbook("slurm.yml", node["inventory"], extravars, check=True, timeout_s=600)
    assert result.succeeded, result.stdout[-3000:]
    assert result.changed == {}


def test_slurmd_reads_the_generated_configuration(converged, node):
    """slurmd parses the files the roles wrote (`slurmd -C` prints this machine's node line after reading them)."""
    done = subprocess.run(["chroot", str(node["rootfs"]), "slurmd", "-C"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("NodeName="), done.stdout + done.stderr
    assert Path(node["rootfs"] / "usr/sbin/slurmctld").exists()
