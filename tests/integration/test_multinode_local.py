"""The multi-node checks on target local -- N torchrun agents on this machine meet at a c10d rendezvous over
loopback, as they would across hosts (tests/integration/test_hosts_executor.py runs them over SSH) -- and
`node_level` on N local nodes, each running the single-node workloads on its own."""

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


@pytest.mark.timeout(120)
def test_network_fails_where_declared_rdma_has_no_device_naming_each_node(tmp_path):
    """The pool declares RDMA; this machine has no RDMA device: TCP is measured, RDMA cannot be, and that fails the
    check naming each node, why, and the recommended action (declared but absent is never a pass)."""
    if Path("/sys/class/infiniband").is_dir() and any(Path("/sys/class/infiniband").iterdir()):
        pytest.skip("this machine has RDMA devices: the skip path cannot be shown here")
    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    config = document["config"]
    config["dcforge:gpuPools"] = [{"name": "fabric", "gpuModel": "H100-SXM", "gpusPerNode": 8, "nodeCount": 2,
                                   "rdma": True}]
    config["dcforge:network"]["rdma"] = {"enabled": True, "interfaces": ["ibp12s0"], "cidr": "192.168.0.0/18"}
    config["dcforge:acceptance"] = {"checks": ["network"], "settings": {"network": {"seconds": 1}}}
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.rdmaless.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "rdmaless"], capture_output=True,
                          text=True, timeout=110, cwd=tmp_path, env={**os.environ, "DCFORGE_STACKS_DIR": str(stacks)})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_file,) = (tmp_path / "reports" / "rdmaless").glob("*/report.json")
    (network,) = json.loads(report_file.read_text())["checks"]
    assert network["status"] == "fail"
    assert network["reason"] == ("pool 'fabric' declares RDMA, not measured on 2 of 2 nodes: no RDMA device on local-0 "
                                 "(/sys/class/infiniband is empty); no RDMA device on local-1 (/sys/class/infiniband "
                                 "is empty); recommended action: reboot node")
    assert [(row["host"], row["action"]) for row in network["details"]["nodes"]] == [
        ("local-0", "reboot_node"), ("local-1", "reboot_node")]
    assert "tcp_gbps.min" in network["metrics"] and "rdma_gbps.min" not in network["metrics"]
    rdma = network["details"]["rdma"]
    assert rdma["pool"] == "fabric" and rdma["pairs_measured"] == 0
    assert rdma["skipped"] == ("no RDMA device on local-0 (/sys/class/infiniband is empty); "
                               "no RDMA device on local-1 (/sys/class/infiniband is empty)")
    assert network["details"]["pairs"][0]["rdma_skipped"] == rdma["skipped"]
    assert "RDMA local-0 -> local-1 skipped: no RDMA device on local-0" in proc.stdout


@pytest.mark.timeout(300)
def test_node_level_runs_every_workload_on_each_sampled_local_node(tmp_path):
    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    document["config"]["dcforge:acceptance"] = {
        "checks": ["node_level"],
        # 3 nodes in the pool, 2 sampled (0 and 1); a lenient outlier fraction: both nodes share 2 loaded cores
        "settings": {"node_level": {"nodes": 3, "sample": 2, "outlierFraction": 0.9,
                                    "train": {"steps": 4, "warmupStepsExcluded": 1, "nprocPerNode": 1},
                                    "allreduce": {"maxBytes": "16K", "factor": 16}}},
        "slos": {"node_level.tokens_per_s.min": "> 0", "node_level.nodes_failed": "== 0"}}
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.pernode.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "pernode"], capture_output=True,
                          text=True, timeout=290, cwd=tmp_path, env={**os.environ, "DCFORGE_STACKS_DIR": str(stacks)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_file,) = (tmp_path / "reports" / "pernode").glob("*/report.json")
    report = json.loads(report_file.read_text())
    check = report["checks"][0]
    assert check["status"] == "pass", check["reason"]
    assert check["details"]["sampled"] == ["local-0", "local-1"] and check["details"]["pool_size"] == 3
    for row in check["details"]["nodes"]:
        assert row["state"] == "succeeded" and row["outlier"] is False
        assert row["tokens_per_s"] > 0 and row["busbw_gbps"] > 0 and row["save_gbps"] > 0 and row["cpu_count"] >= 1
        assert (report_file.parent / row["logs"] / "train" / "train-0.log").is_file()
        assert not (report_file.parent / row["logs"] / "checkpoint" / "checkpoint-0" / "scratch").exists()
    metrics = check["metrics"]
    assert metrics["nodes"]["value"] == 2 and metrics["nodes_failed"]["value"] == 0
    values = [row["tokens_per_s"] for row in check["details"]["nodes"]]
    assert metrics["tokens_per_s.min"]["value"] == min(values)
    assert metrics["tokens_per_s.median"]["value"] == pytest.approx(sum(values) / 2)
    assert [slo["verdict"] for slo in report["slos"]] == ["pass", "pass"]
    junit = (report_file.parent / "junit.xml").read_text()
    assert 'name="node_level local-0"' in junit and 'name="node_level local-1"' in junit
    assert "<table class='nodes'>" in (report_file.parent / "report.html").read_text()
