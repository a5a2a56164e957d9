"""The Ansible inventories are generated from the environment files (`dcforge inventory`): the checked-in files are
exactly what the generator writes, Ansible reads the versions, verdict and pool facts from them, and the
compatibility rules exist only in dcforge.spec."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from dcforge.cli import app
from dcforge.inventory import (
    INVENTORIES_DIR,
    compatibility_verdict,
    drifted_files,
    environment_verdict,
    inventory_files,
    pool_group,
    versions_vars,
)
from dcforge.paths import PLAYBOOKS_DIR
from dcforge.provision import versions_extravars
from dcforge.spec import load_environment
from dcforge.spec.compat import default_table, table_path, version_problems
from dcforge.spec.gpus import GPU_MODELS
from dcforge.spec.models import Versions

ENVIRONMENTS = ["local", "dev", "prod"]
GOOD = {"driver": "570.172.08", "cuda": "12.8", "nccl": "2.26.2", "containerToolkit": "1.17.8",
        "dcgm": "4.2.3", "gpuOperator": "v25.3.2"}


@pytest.mark.parametrize("env", [*ENVIRONMENTS, "cluster"])
def test_checked_in_inventory_is_what_dcforge_inventory_generates(env):
    """The drift test: edit stacks/Pulumi.<env>.yaml and this fails until `dcforge inventory --env <env>` runs."""
    loaded = load_environment(env)
    files = inventory_files(loaded.spec, f"stacks/Pulumi.{env}.yaml")
    assert drifted_files(INVENTORIES_DIR / env, files) == []
    result = CliRunner().invoke(app, ["inventory", "--env", env, "--check"])
    assert result.exit_code == 0, result.output


def _ansible_host_vars(env: str, host: str) -> dict:
    """The variables Ansible itself resolves for a host of the checked-in inventory (group_vars included)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(INVENTORIES_DIR / env)])
    return VariableManager(loader=loader, inventory=inventory).get_vars(host=inventory.get_host(host))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_ansible_reads_the_environment_files_versions_and_verdict(env):
    """Plain ansible-playbook users get exactly what `dcforge provision` passes as extravars."""
    loaded = load_environment(env)
    host = "localhost" if env == "local" else pool_hosts_of(env)[0]
    host_vars = _ansible_host_vars(env, host)
    extravars = versions_extravars(loaded)
    for name in ("dcforge_versions", "dcforge_compatibility", "dcforge_environment_kind", "dcforge_environment"):
        assert host_vars[name] == extravars[name], name
    # What the environment file writes under dcforge:versions, word for word, plus the defaults it leaves out.
    assert host_vars["dcforge_versions"].items() >= loaded.raw_config["versions"].items()
    assert Versions.model_validate(host_vars["dcforge_versions"]) == loaded.spec.versions
    assert host_vars["dcforge_compatibility"]["problems"] == []


def pool_hosts_of(env: str) -> list[str]:
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    inventory = InventoryManager(loader=DataLoader(), sources=[str(INVENTORIES_DIR / env)])
    return [host.name for host in inventory.groups["gpu_nodes"].get_hosts()]


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_each_pool_has_its_nodes_and_facts_in_the_inventory(env):
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    spec = load_environment(env).spec
    inventory = InventoryManager(loader=DataLoader(), sources=[str(INVENTORIES_DIR / env)])
    for pool in spec.gpu_pools:
        hosts = [host.name for host in inventory.groups[pool_group(pool.name)].get_hosts()]
        assert len(hosts) == pool.size, pool.name
        if pool.nodes:
            assert sorted(hosts) == sorted(pool.nodes)
        host_vars = _ansible_host_vars(env, hosts[-1])
        nvswitch = GPU_MODELS[pool.gpu_model].nvswitch
        assert host_vars["preflight_require_nvswitch"] is nvswitch and host_vars["fabric_manager_enabled"] is nvswitch
        assert host_vars["rdma_enabled"] is pool.rdma and host_vars["rdma_gpudirect"] is pool.rdma
    assert len(inventory.groups["gpu_nodes"].get_hosts()) == sum(pool.size for pool in spec.gpu_pools)


def test_prod_pools_get_their_facts_from_the_environment_file():
    """HGX H100 training pools with RDMA; the L40S pool has neither NVSwitch nor RDMA."""
    assert _ansible_host_vars("prod", "prod-train-b-64")["rdma_enabled"] is True
    infer = _ansible_host_vars("prod", "prod-infer-l40s-16")
    assert (infer["rdma_enabled"], infer["fabric_manager_enabled"], infer["preflight_require_nvswitch"]) == \
        (False, False, False)


def test_versions_extravars_carry_the_file_keys():
    extravars = versions_extravars(load_environment("dev"))
    versions = extravars["dcforge_versions"]
    assert versions["driver"] == "570.172.08" and versions["fabricManager"] == versions["driver"]
    assert versions["containerToolkit"] == "1.17.8"  # camelCase, as in the environment file
    assert extravars["dcforge_environment_kind"] == "dev"
    assert extravars["dcforge_compatibility"] == environment_verdict(load_environment("dev").spec)
    local = versions_extravars(load_environment("local"))["dcforge_versions"]
    assert "fabricManager" not in local  # unset stays unset: the fabric manager role then follows the driver


def test_verdict_lists_every_problem_of_the_rules_in_dcforge_spec():
    bad = Versions.model_validate({**GOOD, "driver": "545.29.06", "cuda": "13.0", "nccl": "2.18.5",
                                   "fabricManager": "545.29.02", "gpuOperator": "v26.1.0"})
    verdict = compatibility_verdict(bad, ["H100-SXM", "B200", "H100-SXM"], prod=True)
    expected = version_problems(bad, [GPU_MODELS["B200"], GPU_MODELS["H100-SXM"]], prod=True)
    assert verdict["problems"] == [f"dcforge:versions.{key}: {message}" for key, message in expected]
    # feature branch in prod, CUDA, NCCL, fabric manager, GPU Operator, and B200's minimum driver branch
    assert len(verdict["problems"]) == 6, verdict["problems"]
    assert verdict["versions"] == versions_vars(bad)
    assert verdict["min_kernel"] == default_table().driver_branches["545"]["minKernel"]
    unknown_branch = compatibility_verdict(Versions.model_validate({**GOOD, "driver": "600.10.01"}), [], prod=False)
    assert unknown_branch["min_kernel"] is None
    assert any("driver branch 600 is not in the compatibility table" in p for p in unknown_branch["problems"])
    assert compatibility_verdict(Versions.model_validate(GOOD), [], prod=True)["problems"] == []


def test_the_playbooks_hold_no_compatibility_rules():
    """The table is read only by dcforge.spec.compat: no task, template or variable file names it or any of its
    sections (the READMEs may say where the rules are)."""
    sections = list(yaml.safe_load(table_path().read_text()))
    pattern = re.compile("|".join(["compatibility\\.yaml", *sections]))
    offenders = [str(path.relative_to(PLAYBOOKS_DIR)) for path in PLAYBOOKS_DIR.rglob("*")
                 if path.suffix in (".yml", ".yaml", ".j2", ".cfg") and pattern.search(path.read_text())]
    assert offenders == []


def test_inventory_command_writes_checks_and_removes_stale_pool_files(tmp_path, env_file):
    target = tmp_path / "inventory"
    shutil.copytree(INVENTORIES_DIR / "dev", target)
    (target / "group_vars" / "all" / "site.yml").write_text("---\nnvidia_repository_debian_mirror: http://m\n")
    # The infer-l4 pool is gone from this environment: its generated group_vars must go, site files stay.
    path = env_file("dev", replace={"    - name: infer-l4\n": "    - name: infer-l4x\n",
                                    "infer-l4: 8}": "infer-l4x: 8}"})
    runner = CliRunner()
    checked = runner.invoke(app, ["inventory", "--env-file", str(path), "--out", str(target), "--check"])
    assert checked.exit_code == 1 and "out of date" in checked.output
    assert "pool_infer_l4x" in checked.output and "pool_infer_l4/dcforge.yml" in checked.output
    written = runner.invoke(app, ["inventory", "--env-file", str(path), "--out", str(target)])
    assert written.exit_code == 0, written.output
    assert not (target / "group_vars" / "pool_infer_l4").exists()
    assert (target / "group_vars" / "pool_infer_l4x" / "dcforge.yml").is_file()
    assert (target / "group_vars" / "all" / "site.yml").is_file()
    assert "dev-infer-l4x-01" in (target / "hosts.yml").read_text()
    assert runner.invoke(app, ["inventory", "--env-file", str(path), "--out", str(target), "--check"]).exit_code == 0
