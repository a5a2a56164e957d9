"""Molecule-style converge / idempotence / verify / check-mode of the GPU-node playbook against a Debian 12 chroot,
and `dcforge provision` end to end (including a failing and an unreachable host)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dcforge.provision import PLAYBOOKS_DIR, run_playbook, versions_extravars
from dcforge.spec import load_environment
from tests.integration.ansible_support import (build_test_mirror, chroot_host, fresh_rootfs, serve_directory,
                                               skip_unless_chroot_targets_possible, write_inventory)

pytestmark = pytest.mark.slow

ENV = "dev"  # pins a fabric manager, so every package role has something to plan
CONVERGED_TAGS = ["repositories", "tuning", "container_toolkit"]
PLANNED_TAGS = ["driver", "cuda", "nccl", "fabric_manager", "dcgm", "rdma"]


def _mirror_packages(versions: dict, kernel: str) -> dict[str, list[tuple[str, str]]]:
    """NVIDIA's names and version strings for the pinned stack, plus a newer decoy of each (never to be chosen)."""
    driver, cuda, nccl = versions["driver"], versions["cuda"], versions["nccl"]
    toolkit, dcgm = versions["containerToolkit"], versions["dcgm"]
    cuda_dashed = cuda.replace(".", "-")
    cuda_repo = [
        ("nvidia-driver", f"{driver}-1"), ("nvidia-driver", "580.95.05-1"),
        ("nvidia-kernel-open-dkms", f"{driver}-1"), ("nvidia-kernel-open-dkms", "580.95.05-1"),
        ("nvidia-persistenced", f"{driver}-1"), ("nvidia-persistenced", "580.95.05-1"),
        (f"cuda-toolkit-{cuda_dashed}", f"{cuda}.1-1"), ("cuda-toolkit-13-0", "13.0.2-1"),
        ("libnccl2", f"{nccl}-1+cuda{cuda}"), ("libnccl2", "2.28.3-1+cuda13.0"),
        ("libnccl-dev", f"{nccl}-1+cuda{cuda}"), ("libnccl-dev", "2.28.3-1+cuda13.0"),
        (f"nvidia-fabricmanager-{driver.split('.')[0]}", f"{driver}-1"),
        (f"nvidia-fabricmanager-{driver.split('.')[0]}", f"{driver.split('.')[0]}.999.01-1"),
        (f"datacenter-gpu-manager-4-cuda{cuda.split('.')[0]}", f"1:{dcgm}-1"),
        (f"datacenter-gpu-manager-4-cuda{cuda.split('.')[0]}", "1:4.9.9-1"),
        ("datacenter-gpu-manager-4-core", f"1:{dcgm}-1"), ("datacenter-gpu-manager-4-core", "1:4.9.9-1"),
        # The running kernel's headers: NVIDIA's repository does not carry them, but the driver role installs
        # them and the chroot's Debian mirror has none for this host's kernel.
        (f"linux-headers-{kernel}", "1.0-1"),
    ]
    toolkit_repo = [(name, version) for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                                                 "libnvidia-container-tools", "libnvidia-container1")
                    for version in (f"{toolkit}-1", "9.9.9-1")]
    return {"cuda": cuda_repo, "container-toolkit": toolkit_repo}


@pytest.fixture(scope="module")
def extravars() -> dict:
    return versions_extravars(load_environment(ENV))


@pytest.fixture(scope="module")
def mirror_url(tmp_path_factory, extravars):
    skip_unless_chroot_targets_possible()
    root = build_test_mirror(tmp_path_factory.mktemp("mirror") / "nvidia",
                             _mirror_packages(extravars["dcforge_versions"], os.uname().release))
    with serve_directory(root) as url:
        yield url


def _target_vars(mirror_url: str) -> dict:
    """What a chroot image build needs: no GPU/headers on the build machine, services not started, local mirror."""
    return {
        "dcforge_image_build": True,
        "preflight_require_nvidia_gpu": False,
        "preflight_require_kernel_headers": False,
        "preflight_min_free_disk_gib": 1,
        "nvidia_repository_cuda_url": f"{mirror_url}/cuda/",
        "nvidia_repository_cuda_key_url": f"{mirror_url}/cuda/key.asc",
        "nvidia_repository_container_toolkit_url": f"{mirror_url}/container-toolkit/",
        "nvidia_repository_container_toolkit_key_url": f"{mirror_url}/container-toolkit/key.asc",
        "fabric_manager_enabled": True,
        "rdma_enabled": True,
        "node_acceptance_enabled": False,
    }


@pytest.fixture(scope="module")
def node(tmp_path_factory, mirror_url):
    """A fresh chroot (alias `gpu-image`) and its inventory."""
    skip_unless_chroot_targets_possible()
    work = tmp_path_factory.mktemp("chroot")
    rootfs = fresh_rootfs(work / "rootfs")
    inventory = write_inventory(work / "inventory.yml", {"gpu-image": chroot_host(rootfs)}, _target_vars(mirror_url))
    return {"rootfs": rootfs, "inventory": inventory, "work": work}


@pytest.fixture(scope="module")
def converged(node, extravars):
    first = run_playbook("gpu-node.yml", node["inventory"], extravars, tags=CONVERGED_TAGS, timeout_s=600)
    assert first.succeeded, first.stdout[-4000:]
    second = run_playbook("gpu-node.yml", node["inventory"], extravars, tags=CONVERGED_TAGS, timeout_s=600)
    return {"first": first, "second": second}


def _dpkg_status(rootfs: Path) -> dict[str, tuple[str, str]]:
    """{package: (version, selection)} from the chroot's dpkg database."""
    packages = {}
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if "Package" in fields:
            packages[fields["Package"]] = (fields.get("Version", ""), fields.get("Status", "").split()[0])
    return packages


def test_converge_installs_exactly_the_pinned_toolkit_and_holds_it(converged, node, extravars):
    assert converged["first"].changed.get("gpu-image", 0) > 0
    status = _dpkg_status(node["rootfs"])
    pinned = extravars["dcforge_versions"]["containerToolkit"] + "-1"
    for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                 "libnvidia-container1"):
        assert status[name] == (pinned, "hold"), (name, status.get(name))  # the 9.9.9-1 decoy is newer
    sources = (node["rootfs"] / "etc/apt/sources.list.d/dcforge-nvidia-cuda.sources").read_text()
    assert "Signed-By: /etc/apt/keyrings/dcforge-nvidia-cuda.asc" in sources
    assert "BEGIN PGP PUBLIC KEY BLOCK" in (node["rootfs"] / "etc/apt/keyrings/dcforge-nvidia-cuda.asc").read_text()
    # An image build writes kernel parameters and boot settings but applies nothing to the build machine.
    assert not (node["rootfs"] / "var/run/reboot-required").exists()


def test_second_converge_changes_nothing(converged):
    second = converged["second"]
    assert second.succeeded, second.stdout[-4000:]
    assert second.changed == {}, [line for line in second.stdout.splitlines() if line.startswith("changed")]


def test_verify_playbook_passes_on_the_converged_node(converged, node, extravars):
    result = run_playbook("verify.yml", node["inventory"], extravars, timeout_s=300)
    assert result.succeeded, result.stdout[-4000:]
    assert result.changed == {}


def test_verify_playbook_catches_a_drifted_package(converged, node, extravars, tmp_path):
    """The verify step can fail: unhold one package and it says so."""
    subprocess.run(["chroot", str(node["rootfs"]), "apt-mark", "unhold", "libnvidia-container1"], check=True,
                   timeout=60, capture_output=True)
    try:
        result = run_playbook("verify.yml", node["inventory"], extravars, timeout_s=300)
        assert result.failed_hosts == ["gpu-image"]
        assert "libnvidia-container1 is not held" in result.stdout
    finally:
        subprocess.run(["chroot", str(node["rootfs"]), "apt-mark", "hold", "libnvidia-container1"], check=True,
                       timeout=60, capture_output=True)


def _planned_installs(events: list[dict]) -> dict[str, str]:
    """{package: version} from apt's simulated `Inst <package> (<version> ...` lines in check-mode results."""
    planned = {}
    for event in events:
        stdout = (event.get("event_data", {}).get("res") or {}).get("stdout", "") or ""
        for name, version in re.findall(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+)", stdout, re.M):
            planned[name] = version
    return planned


def test_check_mode_plans_exactly_the_pinned_driver_cuda_nccl_fabric_manager_and_dcgm(converged, node, extravars):
    before = hashlib.sha256((node["rootfs"] / "var/lib/dpkg/status").read_bytes()).hexdigest()
    result = run_playbook("gpu-node.yml", node["inventory"], extravars, check=True, tags=PLANNED_TAGS,
                          timeout_s=600)
    assert result.succeeded, result.stdout[-4000:]
    planned = _planned_installs(result.events)
    v = extravars["dcforge_versions"]
    expected = {
        "nvidia-driver": f"{v['driver']}-1",
        "nvidia-kernel-open-dkms": f"{v['driver']}-1",
        "nvidia-persistenced": f"{v['driver']}-1",
        f"cuda-toolkit-{v['cuda'].replace('.', '-')}": f"{v['cuda']}.1-1",
        "libnccl2": f"{v['nccl']}-1+cuda{v['cuda']}",
        "libnccl-dev": f"{v['nccl']}-1+cuda{v['cuda']}",
        f"nvidia-fabricmanager-{v['driver'].split('.')[0]}": f"{v['fabricManager']}-1",
        f"datacenter-gpu-manager-4-cuda{v['cuda'].split('.')[0]}": f"1:{v['dcgm']}-1",
        "datacenter-gpu-manager-4-core": f"1:{v['dcgm']}-1",
    }
    assert {name: planned.get(name) for name in expected} == expected
    assert "cuda-toolkit-13-0" not in planned
    assert {"dkms", f"linux-headers-{os.uname().release}", "rdma-core", "perftest"} <= set(planned)
    # Check mode planned all of that and installed none of it.
    assert hashlib.sha256((node["rootfs"] / "var/lib/dpkg/status").read_bytes()).hexdigest() == before


def _closed_port() -> int:
    """A local TCP port nothing listens on: ssh gets `connection refused` at once (an unreachable host)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_provision_end_to_end_reports_failed_and_unreachable_hosts(converged, node, mirror_url, tmp_path):
    """`dcforge provision` through the CLI: the converged image is fine, a host with too little disk is refused
    by preflight, a host whose ssh port is closed is unreachable; the summary lists all three, exit 1 names them."""
    inventory = write_inventory(tmp_path / "inventory.yml", {
        "gpu-image": chroot_host(node["rootfs"]),
        "small-disk": {**chroot_host(node["rootfs"]), "preflight_min_free_disk_gib": 10**9},
        "gone": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": _closed_port(),
                 "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no"},
    }, _target_vars(mirror_url))
    command = [sys.executable, "-c", "from dcforge.cli import app; app()", "provision", "--env", ENV,
               "--inventory", str(inventory), "--tags", "tuning"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "COLUMNS": "200"}, cwd=PLAYBOOKS_DIR.parent)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output
    rows = {match[0]: match[1:] for match in re.findall(
        r"^[│┃|]\s*(\S+)\s*[│┃|]\s*(\d+)\s*[│┃|]\s*(\d+)\s*[│┃|]\s*(\d+)\s*[│┃|]\s*(\d+)\s*[│┃|].*?(ok|changed|failed|unreachable)\s*[│┃|]",
        output, re.M)}
    assert rows["gpu-image"][1:4] == ("0", "0", "0") and rows["gpu-image"][4] == "ok", output
    assert rows["small-disk"][2] == "1" and rows["small-disk"][4] == "failed", output
    assert rows["gone"][3] == "1" and rows["gone"][4] == "unreachable", output
    assert "provision failed on 2 host(s): gone (unreachable), small-disk (failed)" in output
    assert re.search(r"FAILED\s+small-disk\s+preflight : Refuse the host .*GiB free", output), output
