"""Ansible on a Debian 12 chroot: first converge vs idempotent re-run vs check-mode plan, side by side.

    sudo python -m benchmarks.ansible_converge

Figures: re-run / converge wall time (what a no-op `dcforge provision` costs relative to a real one), and the
per-task cost of a check-mode plan of the driver/CUDA/NCCL/fabric manager/DCGM/RDMA roles. Needs root,
debootstrap and gpg (`make system-deps`); the rootfs cache is shared with the tests.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from dcforge.provision import run_playbook, versions_extravars
from dcforge.spec import load_environment
from tests.integration.ansible_support import (build_test_mirror, chroot_host, fresh_rootfs, serve_directory,
                                               write_inventory)
from tests.integration.test_ansible_chroot import (CONVERGED_TAGS, ENV, PLANNED_TAGS, _mirror_packages,
                                                   _target_vars)


def _timed(label: str, **kwargs) -> tuple[float, int]:
    started = time.perf_counter()
    run = run_playbook("gpu-node.yml", **kwargs, timeout_s=900)
    elapsed = time.perf_counter() - started
    if not run.succeeded:
        raise SystemExit(f"{label} failed:\n{run.stdout[-3000:]}")
    tasks = sum(host.ok + host.changed for host in run.hosts.values())
    print(f"{label:<28} {elapsed:6.1f} s  {tasks:3d} tasks  changed={sum(run.changed.values())}")
    return elapsed, tasks


def main() -> None:
    extravars = versions_extravars(load_environment(ENV))
    with tempfile.TemporaryDirectory(prefix="dcforge-bench-ansible-") as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        rootfs = fresh_rootfs(work / "rootfs")
        print(f"{'rootfs copy (cache warm)':<28} {time.perf_counter() - started:6.1f} s")
        mirror = build_test_mirror(work / "nvidia", _mirror_packages(extravars["dcforge_versions"],
                                                                      os.uname().release))
        with serve_directory(mirror) as url:
            inventory = write_inventory(work / "inventory.yml", {"gpu-image": chroot_host(rootfs)}, _target_vars(url))
            common = {"inventory": inventory, "extravars": extravars}
            converge, _ = _timed("converge", tags=CONVERGED_TAGS, **common)
            rerun, _ = _timed("idempotent re-run", tags=CONVERGED_TAGS, **common)
            plan, plan_tasks = _timed("check-mode plan", tags=PLANNED_TAGS, check=True, **common)
    print(f"re-run / converge: {rerun / converge:.2f}")
    print(f"check-mode plan: {plan / plan_tasks * 1000:.0f} ms per task")


if __name__ == "__main__":
    main()
