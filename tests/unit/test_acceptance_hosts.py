"""`acceptance.target: hosts`: the hosts section's validation and the Ansible inventory it may point at."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dcforge.errors import ConfigError, DcforgeError
from dcforge.executors.inventory import acceptance_hosts, expand_range, inventory_hosts
from dcforge.spec.loader import load_environment

REPO = Path(__file__).resolve().parents[2]


def write_env(tmp_path: Path, acceptance: dict) -> Path:
    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    document["config"]["dcforge:acceptance"] = acceptance
    path = tmp_path / "Pulumi.hosts.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_ranges_expand_with_their_padding():
    assert expand_range("gpu-[01:03]") == ["gpu-01", "gpu-02", "gpu-03"]
    assert expand_range("n[8:10]") == ["n8", "n9", "n10"]
    assert expand_range("rack[1:2]-gpu[1:2]") == ["rack1-gpu1", "rack1-gpu2", "rack2-gpu1", "rack2-gpu2"]


def test_the_shipped_inventories_give_their_pool_hosts():
    dev = inventory_hosts(REPO / "playbooks/inventories/dev/hosts.yml", "pool_train_h100", "k")
    assert [h.name for h in dev] == ["dev-gpu-01", "dev-gpu-02"] and dev[0].address == "dev-gpu-01"
    prod = inventory_hosts(REPO / "playbooks/inventories/prod/hosts.yml", "pool_train_a", "k")
    assert len(prod) == 64 and prod[-1].name == "prod-train-a-64"
    everything = inventory_hosts(REPO / "playbooks/inventories/prod/hosts.yml", None, "k")
    assert len(everything) == 64 + 64 + 16


def test_inventory_connection_variables_and_section_defaults(tmp_path):
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"gpus": {"hosts": {
        "a": {"ansible_host": "10.0.0.1", "ansible_port": 2222, "ansible_user": "ops",
              "ansible_ssh_private_key_file": "/keys/a"},
        "b": {"ansible_host": "10.0.0.2"}}}}}}))
    path = write_env(tmp_path, {"checks": ["allreduce_multinode"], "target": "hosts",
                                "hosts": {"inventory": "hosts.yml", "group": "gpus", "user": "root",
                                          "identityFile": "keys/default", "knownHostsFile": "known",
                                          "socketIfname": "eth0"}})
    a, b = acceptance_hosts(load_environment(path=path))
    assert (a.address, a.port, a.user, a.identity_file) == ("10.0.0.1", 2222, "ops", "/keys/a")
    assert (b.address, b.port, b.user, b.identity_file) == ("10.0.0.2", 22, "root", str(tmp_path / "keys/default"))
    assert a.known_hosts_file == b.known_hosts_file == str(tmp_path / "known")


def test_hosts_listed_in_the_environment(tmp_path):
    path = write_env(tmp_path, {"target": "hosts", "hosts": {"hosts": [{"name": "n1", "address": "10.0.0.1"},
                                                                       {"name": "n2"}]}})
    n1, n2 = acceptance_hosts(load_environment(path=path))
    assert (n1.name, n1.address, n2.address) == ("n1", "10.0.0.1", "n2")


@pytest.mark.parametrize("acceptance, key, message", [
    ({"target": "hosts"}, "dcforge:acceptance", "target hosts needs `hosts`"),
    ({"target": "hosts", "hosts": {}}, "dcforge:acceptance.hosts", "exactly one"),
    ({"target": "hosts", "hosts": {"inventory": "x.yml", "hosts": [{"name": "a"}]}}, "dcforge:acceptance.hosts",
     "exactly one"),
    ({"target": "hosts", "hosts": {"hosts": [{"name": "a"}, {"name": "a"}]}}, "dcforge:acceptance.hosts",
     "unique: a"),
    ({"target": "hosts", "hosts": {"hosts": [{"name": "a", "port": 70000}]}}, "dcforge:acceptance.hosts.hosts[0].port",
     "65535"),
    ({"target": "hosts", "hosts": {"hosts": [{"name": "a"}], "socketIfname": "eth0; rm"}},
     "dcforge:acceptance.hosts.socketIfname", ""),
    ({"target": "hosts", "hosts": {"hosts": [{"name": "a"}], "group": "g"}}, "dcforge:acceptance.hosts",
     "needs inventory"),
])
def test_bad_hosts_section_names_the_key(tmp_path, acceptance, key, message):
    with pytest.raises(DcforgeError) as error:
        load_environment(path=write_env(tmp_path, acceptance))
    assert key in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("inventory, message", [
    (None, "cannot read inventory"),
    ("all: [", "is not YAML"),
    ("hosts: {}", "has no `all` group"),
    ("all: {children: {gpus: {hosts: {a: }}}}", "has no group 'train'"),
    ("all: {children: {train: {hosts: {localhost: {ansible_connection: local}}}}}", "ansible_connection local"),
    ("all: {children: {train: {}}}", "lists no hosts in group 'train'"),
])
def test_bad_inventory_is_one_line_naming_file_and_key(tmp_path, inventory, message):
    if inventory is not None:
        (tmp_path / "inv.yml").write_text(inventory)
    path = write_env(tmp_path, {"target": "hosts", "hosts": {"inventory": "inv.yml", "group": "train"}})
    with pytest.raises(ConfigError) as error:
        acceptance_hosts(load_environment(path=path))
    text = str(error.value)
    assert text.startswith(f"{path}: dcforge:acceptance.hosts.inventory: ") and message in text and "\n" not in text
