"""The multi-node checks on target local: N torchrun agents on this machine meet at a c10d rendezvous over
loopback, as they would across hosts (tests/integration/test_hosts_executor.py runs them over SSH)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(300)
def test_multinode_checks_pass_on_two_local_nodes_with_a_node_table(tmp_path):
    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    document["config"]["dcforge:acceptance"] = {
        "checks": ["train_multinode", "allreduce_multinode", "network"],
        "settings": {"train_multinode": {"seqLen": 64, "globalBatchSize": 8, "steps": 10},
                     "allreduce_multinode": {"maxBytes": "64K", "factor": 8},
                     "network": {"seconds": 1}},
        "slos": {"allreduce_multinode.sizes_incorrect": "== 0", "train_multinode.loss_end": "< 6"}}
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.twonodes.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "twonodes"], capture_output=True,
                          text=True, timeout=290, cwd=tmp_path, env={**os.environ, "DCFORGE_STACKS_DIR": str(stacks)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_file,) = (tmp_path / "reports" / "twonodes").glob("*/report.json")
    checks = {c["name"]: c for c in json.loads(report_file.read_text())["checks"]}
    for name in ("train_multinode", "allreduce_multinode"):
        check = checks[name]
        assert check["status"] == "pass", check["reason"]
        assert check["details"]["executor"] == "local" and check["details"]["nnodes"] == 2
        assert [(n["node"], n["host"], n["state"]) for n in check["details"]["nodes"]] == \
            [(0, "local", "succeeded"), (1, "local", "succeeded")]
        for node in check["details"]["nodes"]:
            assert (report_file.parent / node["log"]).is_file()
    assert checks["allreduce_multinode"]["details"]["world_size"] == 2
    transport = checks["allreduce_multinode"]["details"]["nccl_transport"]
    assert transport["backend"] == "gloo" and [r["rule"]["verdict"] for r in transport["runs"]] == ["skipped"] * 2
    assert [n["transport"] for n in checks["allreduce_multinode"]["details"]["nodes"]] == ["TCP", "TCP"]
    network = checks["network"]
    assert network["status"] == "pass", network["reason"]
    assert network["details"]["pairs"][0]["nodes"] == ["local-0", "local-1"]
    assert network["metrics"]["tcp_gbps.min"]["value"] > 0 and network["metrics"]["rtt_us.max"]["value"] > 0
    train = checks["train_multinode"]["metrics"]
    assert train["loss_end"]["value"] < train["loss_start"]["value"]
    assert train["tokens_per_s_total"]["value"] == pytest.approx(2 * train["tokens_per_s"]["value"])
