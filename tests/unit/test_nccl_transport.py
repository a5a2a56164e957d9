"""The NCCL transport parser, the RDMA rule and how a check records them, on real NCCL logs posted publicly
(tests/unit/real_logs/nccl/, sources in its index.json; every fixture's truth is asserted in test_gpu_real_logs.py)."""

from __future__ import annotations

from pathlib import Path

from dcforge.harness.result import CheckResult, Status
from dcforge.nccl_transport import gloo_transport, parse_nccl_log, rdma_rule, record_transport

REAL = Path(__file__).parent / "real_logs" / "nccl"


def log(name: str) -> str:
    return (REAL / name).read_text()


def test_roce_from_the_device_list_with_ib_picked():
    transport = parse_nccl_log(log("nccl-tests-185-nccl2.19.3-roce.log"))
    assert (transport.network, transport.version, transport.evidence) == ("RoCE", "2.19.3", "Using network")
    assert transport.devices == ["mlx5_10:1/RoCE", "mlx5_11:1/RoCE"]
    assert transport.summary() == "RoCE"


def test_old_nccl_without_using_network_reads_the_device_list_and_ignores_the_listed_socket_devices():
    transport = parse_nccl_log(log("nv_peer_memory-56-nccl2.4.7-ib.log"))
    assert (transport.network, transport.evidence, transport.socket_fallback) == ("IB", "NET/IB device list", False)
    assert rdma_rule(transport, "train-a", "master_node").verdict == "pass"


def test_pre_2_5_ring_lines_name_the_plugin():
    transport = parse_nccl_log(log("aws-ofi-nccl-24-ring-libfabric.log"))
    assert (transport.network, transport.plugin, transport.evidence) == ("OFI", "AWS Libfabric", "NET channel")


def test_one_rank_on_socket_among_ranks_on_ib_is_named_and_fails_the_rule():
    transport = parse_nccl_log(log("nccl-tests-188-one-node-socket.log"))
    assert transport.network == "IB" and transport.socket_ranks == ["user:16902", "user:16906"]
    assert transport.socket_fallback and "Socket on user:16902, user:16906" in transport.summary()
    verdict = rdma_rule(transport, "train-a", "gpu-b")
    assert verdict.verdict == "fail" and "ranks user:16902, user:16906 fell back to Socket" in verdict.reason


def test_collnet_sharp_and_gpudirect_rdma():
    transport = parse_nccl_log(log("nccl-tests-311-nccl2.23.4-collnet-sharp.log"))
    assert (transport.collnet, transport.gpudirect_rdma, transport.network) == ("SHARP", True, "IB")
    assert transport.paths == ["COLLNET/SHARP"]


def test_nvls_is_not_claimed_from_availability_nor_from_an_algo_list_with_zero_channels():
    assert not parse_nccl_log(log("nccl-1584-nccl2.24.3-ibext_v8-nvls-available.log")).nvls
    assert not parse_nccl_log(log("nccl-892-nvls-in-algo-but-0-nvls-channels.log")).nvls


def test_no_line_about_the_network_is_unverified_with_that_reason():
    transport = parse_nccl_log(log("nccl-1866-nccl2.27.6-no-transport-line.log"))
    assert transport.network == "" and transport.version == "2.27.6"
    verdict = rdma_rule(transport, "train-a", "cl4-gpu03-vm")
    assert verdict.verdict == "fail" and "unverified (no line of NCCL's INFO output speaks of" in verdict.reason
    assert (verdict.severity.value, verdict.action.value) == ("unknown", "check_fabric")  # missing evidence
    assert parse_nccl_log("[rank0]: nothing from NCCL here\n").summary() == "unknown"


def test_rule_is_skipped_with_its_reason_for_gloo_and_without_rdma():
    gloo = rdma_rule(gloo_transport(), "train-a", "local")
    assert gloo.verdict == "skipped" and "gloo" in gloo.reason
    assert rdma_rule(parse_nccl_log(log("nccl-tests-179-socket.log")), None, "gpu-b").verdict == "skipped"


def test_record_marks_the_node_that_fell_back_with_its_action():
    result = CheckResult("allreduce_multinode")
    result.details["nodes"] = [{"node": 0, "host": "gpu-a", "state": "succeeded"},
                               {"node": 1, "host": "gpu-b", "state": "succeeded"}]
    logs = [("gpu-a", REAL / "nccl-1358-roce.log"), ("gpu-b", REAL / "nccl-952-socket-channels.log")]
    record_transport(result, "nccl", logs, "train-a")
    assert result.status is Status.FAIL and "gpu-b: NCCL fell back to Socket" in result.reason
    rows = result.details["nodes"]
    assert rows[0]["transport"] == "RoCE" and "problem" not in rows[0] and "action" not in rows[0]
    assert rows[1]["transport"].startswith("Socket") and "fell back to Socket" in rows[1]["problem"]
    assert rows[1]["action"] == "check_fabric"
    runs = result.details["nccl_transport"]["runs"]
    assert [run["rule"]["verdict"] for run in runs] == ["pass", "fail"]
    assert [(run["rule"]["severity"], run["rule"]["action"]) for run in runs] == [("pass", "none"),
                                                                                  ("fail", "check_fabric")]


def test_record_for_gloo_passes_and_says_why_the_rule_was_skipped(tmp_path):
    result = CheckResult("allreduce")
    record_transport(result, "gloo", [("local", tmp_path / "missing.log")], "train-a")
    assert result.status is Status.PASS
    run = result.details["nccl_transport"]["runs"][0]
    assert run["network"] == "TCP" and run["rule"]["verdict"] == "skipped"


def test_networks_that_run_over_tcp_fail_the_rule_as_a_fallback():
    """aws-ofi-nccl over libfabric's tcp provider and GCP's FastSocket carry NCCL's traffic over TCP, not RDMA; EFA,
    verbs plugins (IBext, gIB) and GPUDirect plugins (FasTrak) do not fall back."""
    from dcforge.nccl_transport import NcclTransport, _kind

    assert _kind("AWS Libfabric", [], "tcp") == ("OFI/tcp", "AWS Libfabric")
    assert _kind("Libfabric", [], "efa") == ("EFA", "Libfabric")
    assert _kind("gIB", ["mlx5_0:1/RoCE"], "") == ("RoCE", "gIB")
    for network, falls_back in (("OFI/tcp", True), ("FastSocket", True), ("EFA", False), ("FasTrak", False)):
        transport = NcclTransport("nccl", network)
        verdict = rdma_rule(transport, "train-a", "n1")
        assert transport.socket_fallback is falls_back and (verdict.verdict == "fail") is falls_back, network
        assert not falls_back or f"{network} runs over TCP, not RDMA" in verdict.reason
