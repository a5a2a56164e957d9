"""The node_acceptance role runs `dcforge accept` on a node and brings its report back to the controller.
Here the node is this machine (connection local), running only the read-only `system` check in a temp dir."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from dcforge.provision import run_playbook, versions_extravars
from dcforge.spec import load_environment

pytestmark = pytest.mark.slow

PLAYBOOK = """
- name: Run the node acceptance on this machine
  hosts: gpu_nodes
  gather_facts: false
  roles:
    - role: node_acceptance
"""


def test_node_acceptance_fetches_the_report_of_the_node(tmp_path):
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    remote, fetched = tmp_path / "node-reports", tmp_path / "controller-reports"
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {"hosts": {"this-node": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "node_acceptance_dcforge": str(Path(sys.executable).parent / "dcforge"),
        "node_acceptance_remote_reports": str(remote), "node_acceptance_local_reports": str(fetched),
        "node_acceptance_extra_args": ["--only", "system"],
    }}}}}}))
    run = run_playbook(tmp_path / "play.yml", inventory, versions_extravars(load_environment("local")),
                       timeout_s=300)
    assert run.succeeded, run.stdout[-3000:]
    report = json.loads((fetched / "this-node" / "report.json").read_text())
    assert report["status"] == "pass"
    assert {"report.json", "junit.xml", "report.html"} <= {p.name for p in (fetched / "this-node").iterdir()}
    assert list(remote.iterdir()) == []  # the node keeps no scratch folders
