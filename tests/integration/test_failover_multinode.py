"""`train_failover_multinode`: a node isolated mid-training, elastic torchrun resumes on the others.

On target local (N agents on this machine: the node's processes are killed, there is no link to cut) and on real
network-namespace hosts over SSH (benchmarks/netns_hosts.py: the node's processes killed and its veth
taken down, every host sharing the filesystem, so the checkpoints volume is shared storage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.netns_hosts import IFNAME, accept_on_hosts, missing_prerequisites, namespace_hosts, section_for
from tests.integration.test_hosts_executor import no_workload_left

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]

# small and quick: the check is about the recovery, not the training
SETTINGS = {"seqLen": 32, "steps": 12, "checkpointEvery": 4, "failAtStep": 7, "linkDownS": 3}


def assert_resumed_on_the_others(check: dict, lost: str) -> None:
    """Node 2 of 3 (`lost`) was isolated; training resumed on nodes 0 and 1 and finished there."""
    assert check["status"] == "pass", check["reason"]
    metrics = {name: m["value"] for name, m in check["metrics"].items()}
    assert metrics["steps_lost"] <= SETTINGS["checkpointEvery"]
    assert metrics["failure_step"] - metrics["resumed_step"] == metrics["steps_lost"]
    assert metrics["restarts"] == 1 and metrics["nodes_after"] == 2
    assert 0 < metrics["time_to_resume_s"] < 60
    assert [n["state"] for n in check["details"]["nodes"]] == ["succeeded", "succeeded", "isolated"]
    assert check["details"]["nodes"][2]["host"] == check["details"]["isolated_node"] == lost


@pytest.mark.timeout(240)
def test_local_agents_resume_without_the_isolated_node(tmp_path):
    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    document["config"]["dcforge:acceptance"] = {"checks": ["train_failover_multinode"],
                                                "settings": {"train_failover_multinode": SETTINGS},
                                                "timeoutsS": {"train_failover_multinode": 200}}
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.elastic.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "elastic"], capture_output=True,
                          text=True, timeout=230, cwd=tmp_path, env={**os.environ, "DCFORGE_STACKS_DIR": str(stacks)})
    (report_file,) = (tmp_path / "reports" / "elastic").glob("*/report.json")
    check = json.loads(report_file.read_text())["checks"][0]
    assert proc.returncode == 0, (check["reason"], proc.stdout[-3000:] + proc.stderr[-3000:])
    assert check["details"]["executor"] == "local"
    assert_resumed_on_the_others(check, "local")


_missing = missing_prerequisites()


@pytest.mark.skipif(_missing is not None, reason=_missing or "")
@pytest.mark.timeout(240)
def test_namespace_host_isolated_mid_training_resume_on_the_other_two(tmp_path, tmp_path_factory):
    # hosts of its own: a link taken down must not touch the other tests' hosts
    with namespace_hosts(3, tmp_path_factory.mktemp("elastichosts")) as env:
        proc, report = accept_on_hosts(tmp_path, section_for(env), ["train_failover_multinode"],
                                       {"train_failover_multinode": SETTINGS})
        left = no_workload_left(env)
        link = subprocess.run(["ip", "-n", env.namespaces[2], "-o", "link", "show", IFNAME], capture_output=True,
                              text=True).stdout
    check = next(c for c in report["checks"] if c["name"] == "train_failover_multinode")
    assert proc.returncode == 0, (check["reason"], proc.stdout[-3000:] + proc.stderr[-3000:])
    assert_resumed_on_the_others(check, "ns-host-2")
    assert check["details"]["executor"] == "hosts"
    assert left == [set(), set(), set()]  # no process in any namespace, the link restorer included
    assert "state UP" in link or ",UP" in link  # the link is back
