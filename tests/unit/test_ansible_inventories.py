"""The Ansible inventories agree with the environment files: same pinned versions, same nodes per pool."""

from __future__ import annotations

import pytest
import yaml

from dcforge.provision import PLAYBOOKS_DIR, versions_extravars
from dcforge.spec import load_environment
from dcforge.spec.models import Versions

ENVIRONMENTS = ["local", "dev", "prod"]


def _group_vars(env: str) -> dict:
    return yaml.safe_load((PLAYBOOKS_DIR / "inventories" / env / "group_vars" / "all.yml").read_text())


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_group_vars_pin_the_versions_of_the_environment_file(env):
    """Plain ansible-playbook users get exactly what `dcforge provision` passes as extravars."""
    spec = load_environment(env).spec
    group_vars = _group_vars(env)
    assert Versions.model_validate(group_vars["dcforge_versions"]) == spec.versions
    # Word for word what the environment file writes under dcforge:versions.
    assert group_vars["dcforge_versions"] == load_environment(env).raw_config["versions"]
    assert group_vars["dcforge_environment_kind"] == spec.environment.kind


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_each_pool_has_its_nodes_in_the_inventory(env):
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    spec = load_environment(env).spec
    inventory = InventoryManager(loader=DataLoader(), sources=[str(PLAYBOOKS_DIR / "inventories" / env)])
    pools = {pool.name: pool for pool in spec.gpu_pools}
    for pool in spec.gpu_pools:
        hosts = [host.name for host in inventory.groups[f"pool_{pool.name.replace('-', '_')}"].get_hosts()]
        assert len(hosts) == pool.size, pool.name
        if pool.nodes:
            assert sorted(hosts) == sorted(pool.nodes)
    assert len(inventory.groups["gpu_nodes"].get_hosts()) == sum(pool.size for pool in pools.values())


def test_versions_extravars_carry_the_file_keys(tmp_path):
    extravars = versions_extravars(load_environment("dev"))
    versions = extravars["dcforge_versions"]
    assert versions["driver"] == "570.172.08" and versions["fabricManager"] == versions["driver"]
    assert versions["containerToolkit"] == "1.17.8"  # camelCase, as in the environment file
    assert extravars["dcforge_environment_kind"] == "dev"
    local = versions_extravars(load_environment("local"))["dcforge_versions"]
    assert "fabricManager" not in local  # unset stays unset: the fabric manager role then follows the driver
