"""`dcforge inventory`: the Ansible inventory of an environment, generated from its environment file.

The environment file is the single source of what a node gets: its hosts (pool nodes), its pinned versions and its
host facts (NVSwitch, RDMA). The playbooks never restate them by hand. For each environment this writes, under
`playbooks/inventories/<env>/`:

- `hosts.yml`: every node in `gpu_nodes`, and in a `pool_<pool>` group per GPU pool (an environment without GPU
  pools is this machine: `localhost`, local connection);
- `group_vars/all/dcforge.yml`: `dcforge_versions`, the environment kind, and `dcforge_compatibility`, the verdict
  of `dcforge.spec.compat` on exactly those versions;
- `group_vars/pool_<pool>/dcforge.yml`: the pool's host facts (`preflight_require_nvswitch`,
  `fabric_manager_enabled`, `rdma_enabled`, `rdma_gpudirect`).

Site settings (mirrors, tuning) go in other files beside the generated `dcforge.yml` of a `group_vars/<group>/`
folder; `dcforge inventory` leaves them alone. The files are checked in so that a plain `ansible-playbook` run has
everything, and a test fails when they drift from what this module generates.

The compatibility verdict is how the `preflight` role refuses incompatible versions without a rule set of its own:
it refuses when the verdict lists problems, and when the versions it is asked to install are not the versions the
verdict was computed for (say, `-e dcforge_versions=...` on the command line).
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dcforge.paths import PLAYBOOKS_DIR
from dcforge.spec.compat import default_table, version_problems
from dcforge.spec.gpus import GPU_MODELS
from dcforge.spec.models import Environment, GpuPool, Versions

INVENTORIES_DIR = PLAYBOOKS_DIR / "inventories"
GENERATED_VARS_FILE = "dcforge.yml"
"""The generated file inside each `group_vars/<group>/` folder."""


RANGE_PATTERN = re.compile(r"\[(\d+):(\d+)\]")
"""An Ansible host range (`gpu-[01:64]`), which Slurm writes `gpu-[01-64]`."""


def pool_group(pool_name: str) -> str:
    """The Ansible group of a GPU pool: `train-a` -> `pool_train_a` (group names cannot contain dashes)."""
    return "pool_" + pool_name.replace("-", "_")


def pool_hosts(env_name: str, pool: GpuPool) -> list[str]:
    """Inventory host patterns of a pool: its named nodes, else `<env>-<pool>-NN` numbered from 01 (a range
    pattern `[01:NN]` when there are several)."""
    if pool.nodes:
        return list(pool.nodes)
    if pool.size == 1:
        return [f"{env_name}-{pool.name}-01"]
    return [f"{env_name}-{pool.name}-[01:{pool.size:02d}]"]


SLURM_MEMORY_SHARE = 0.95
"""The share of a node's declared memory slurm.conf gives jobs (RealMemory): slurmd refuses a node whose memory is
below its RealMemory, and the kernel and daemons keep some."""


def slurm_vars(spec: Environment) -> dict[str, Any]:
    """`dcforge_slurm` for the Slurm roles (playbooks/roles/slurm_common): the cluster name, each pool's nodes as a
    Slurm hostlist with their CPUs, memory (MiB) and GPUs (GRES type from the GPU model), and each partition's nodes
    (`acceptance.slurm.partitions`, else `partition`, else one partition per pool named after it)."""
    section = spec.acceptance.slurm
    nodes, partitions = [], {}
    for pool in spec.gpu_pools:
        names = [RANGE_PATTERN.sub(lambda m: f"[{m[1]}-{m[2]}]", host) for host in pool_hosts(spec.name, pool)]
        nodes.append({"names": names, "cpus": pool.cpus_per_node,
                      "memory_mib": int(pool.memory_gi_per_node * 1024 * SLURM_MEMORY_SHARE),
                      "gpus": pool.gpus_per_node, "gpu_type": re.sub(r"[^a-z0-9]+", "_", pool.gpu_model.lower())})
        partition = (section.partitions.get(pool.name, section.partition) if section else None) or pool.name
        partitions.setdefault(partition, []).extend(names)
    return {"cluster_name": spec.name, "nodes": nodes,
            "partitions": [{"name": name, "nodes": names} for name, names in partitions.items()]}


def versions_vars(versions: Versions) -> dict[str, Any]:
    """`dcforge_versions` as the roles read it: the camelCase keys of `dcforge:versions`, unset keys left out."""
    return versions.model_dump(mode="json", by_alias=True, exclude_none=True)


def compatibility_verdict(versions: Versions, gpu_models: list[str], *, prod: bool) -> dict[str, Any]:
    """What the `preflight` role needs from the compatibility table, computed here by `dcforge.spec.compat`:

    - `versions`: the versions this verdict is for (preflight refuses any other versions);
    - `problems`: every rule they break, as `dcforge:versions.<key>: <message>` (empty for a valid environment);
    - `min_kernel`: the oldest kernel the driver branch builds against (the host's kernel is a host fact, so that
      comparison stays in the role), null when the branch is not in the table.
    """
    problems = version_problems(versions, [GPU_MODELS[model] for model in sorted(set(gpu_models))], prod=prod)
    branch = default_table().driver_branches.get(versions.driver_branch) or {}
    return {
        "versions": versions_vars(versions),
        "problems": [f"dcforge:versions.{key}: {message}" for key, message in problems],
        "min_kernel": str(branch["minKernel"]) if "minKernel" in branch else None,
    }


def environment_verdict(spec: Environment) -> dict[str, Any]:
    """The compatibility verdict for an environment's pinned versions and the GPU models of its pools."""
    return compatibility_verdict(spec.versions, [pool.gpu_model for pool in spec.gpu_pools],
                                 prod=spec.environment.kind == "prod")


def pool_facts(spec: Environment, pool: GpuPool) -> dict[str, Any]:
    """Host facts of a pool's nodes, from its GPU model (NVSwitch) and its RDMA setting."""
    nvswitch = GPU_MODELS[pool.gpu_model].nvswitch
    return {
        # NVSwitch baseboards (HGX/DGX) need fabric manager, so a node without its NVSwitch is refused.
        "preflight_require_nvswitch": nvswitch,
        "fabric_manager_enabled": nvswitch,
        "rdma_enabled": pool.rdma and spec.network.rdma.enabled,
        # GPUDirect RDMA (nvidia-peermem) on every node whose NICs are on the RDMA network.
        "rdma_gpudirect": pool.rdma and spec.network.rdma.enabled,
    }


@dataclass(frozen=True)
class GeneratedFile:
    path: Path
    """Relative to the inventory folder."""
    text: str


def _yaml(header: str, document: dict[str, Any]) -> str:
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return "---\n" + comments + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=120)


def inventory_files(spec: Environment, source: str) -> list[GeneratedFile]:
    """Every file of the environment's inventory; `source` names the environment file in the headers."""
    generated_by = f"Generated by `dcforge inventory --env {spec.name}` from {source}: do not edit."
    if spec.gpu_pools:
        hosts = {"all": {"children": {"gpu_nodes": {"children": {
            pool_group(pool.name): {"hosts": {host: {} for host in pool_hosts(spec.name, pool)}}
            for pool in spec.gpu_pools}}}}}
    else:
        # No GPU pools: the environment is this one machine (a workstation or a single fresh GPU server).
        hosts = {"all": {"children": {"gpu_nodes": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}}}
    files = [GeneratedFile(Path("hosts.yml"), _yaml(f"{spec.environment.description}\n{generated_by}", hosts))]
    files.append(GeneratedFile(Path("group_vars/all") / GENERATED_VARS_FILE, _yaml(
        f"Pinned versions and their compatibility verdict.\n{generated_by}",
        {"dcforge_environment": spec.name, "dcforge_environment_kind": spec.environment.kind,
         "dcforge_versions": versions_vars(spec.versions), "dcforge_compatibility": environment_verdict(spec)})))
    for pool in spec.gpu_pools:
        model = GPU_MODELS[pool.gpu_model]
        description = (f"Pool {pool.name}: {pool.size} x {pool.gpus_per_node} {model.name}"
                       f"{', NVSwitch' if model.nvswitch else ''}{', RDMA' if pool.rdma else ''}.")
        files.append(GeneratedFile(Path("group_vars") / pool_group(pool.name) / GENERATED_VARS_FILE,
                                   _yaml(f"{description}\n{generated_by}", pool_facts(spec, pool))))
    return files


def stale_files(inventory_dir: Path, files: list[GeneratedFile]) -> list[Path]:
    """Generated files in the folder that the environment no longer produces (a pool that was removed)."""
    produced = {file.path for file in files}
    existing = {path.relative_to(inventory_dir) for path in inventory_dir.glob(f"group_vars/*/{GENERATED_VARS_FILE}")}
    return sorted(existing - produced)


def drifted_files(inventory_dir: Path, files: list[GeneratedFile], *, content_only: bool = False) -> list[Path]:
    """Files that differ from what is generated, are missing, or are stale. `content_only` compares the YAML
    values, not the text (the header comments name the environment file it was generated from)."""

    def same(file: GeneratedFile) -> bool:
        target = inventory_dir / file.path
        if not target.is_file():
            return False
        if content_only:
            return yaml.safe_load(target.read_text()) == yaml.safe_load(file.text)
        return target.read_text() == file.text

    return [file.path for file in files if not same(file)] + stale_files(inventory_dir, files)


def write_inventory(inventory_dir: Path, files: list[GeneratedFile]) -> list[Path]:
    """Write the generated files (only those that changed) and remove stale ones; returns what changed."""
    changed = drifted_files(inventory_dir, files)
    for file in files:
        target = inventory_dir / file.path
        if file.path in changed:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(file.text)
    for path in stale_files(inventory_dir, files):
        (inventory_dir / path).unlink()
        if not any((inventory_dir / path).parent.iterdir()):
            (inventory_dir / path).parent.rmdir()
    return changed


def inventory_command(env: str = "local", *, env_file: Path | None = None, output: Path | None = None,
                      check: bool = False, console=None) -> int:
    """Generate (or with `check`, only compare) an environment's inventory. Returns 0, or 1 when `check` finds
    files that differ from what the environment file generates."""
    from rich.console import Console

    from dcforge.checks import CATALOG
    from dcforge.spec import load_environment

    console = console or Console(soft_wrap=True)
    loaded = load_environment(None if env_file else env, path=env_file, checks=CATALOG)
    inventory_dir = Path(output) if output is not None else INVENTORIES_DIR / loaded.spec.name
    files = inventory_files(loaded.spec, source_name(loaded.path))
    if check:
        drifted = drifted_files(inventory_dir, files)
        for path in drifted:
            console.print(f"differs: {inventory_dir / path}", markup=False, highlight=False)
        if drifted:
            console.print(f"[red]inventory {inventory_dir} is out of date[/]: run "
                          f"`dcforge inventory --env {loaded.spec.name}`")
            return 1
        console.print(f"[green]inventory {inventory_dir} matches {loaded.path}[/]")
        return 0
    changed = write_inventory(inventory_dir, files)
    console.print(f"inventory {inventory_dir}: {len(changed)} file(s) written or removed"
                  + "".join(f"\n  {path}" for path in changed), markup=False, highlight=False)
    return 0


def source_name(path: Path) -> str:
    """`stacks/Pulumi.<env>.yaml` for the checkout's environment files, else the file name."""
    from dcforge.paths import REPO_ROOT

    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return Path(path).name
