"""The NCCL transport parser and the RDMA rule, on log excerpts written for these tests in the format NCCL prints
with NCCL_DEBUG=INFO (`host:pid:tid [dev] NCCL INFO <message>`, ranks interleaved, other output in between)."""

from __future__ import annotations

from dcforge.harness.result import CheckResult, Status
from dcforge.nccl_transport import gloo_transport, parse_nccl_log, rdma_rule, record_transport

ROCE_TWO_NODES = """\
[rank0]: starting sweep
gpu-a:4101:4101 [0] NCCL INFO Bootstrap : Using eth0:10.1.0.11<0>
gpu-a:4101:4101 [0] NCCL INFO NET/Plugin : No plugin found (libnccl-net.so), using internal implementation
gpu-a:4101:4170 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/RoCE [1]mlx5_1:1/RoCE [RO]; OOB eth0:10.1.0.11<0>
gpu-a:4101:4170 [0] NCCL INFO Using network IB
gpu-a:4102:4171 [1] NCCL INFO Using network IB
gpu-a:4101:4170 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC/read
gpu-a:4102:4171 [1] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/IB/0/GDRDMA
gpu-a:4101:4170 [0] NCCL INFO Channel 00/0 : 3[1] -> 0[0] [receive] via NET/IB/1/GDRDMA
gpu-a:4101:4170 [0] NCCL INFO Connected all rings
gpu-a:4101:4170 [0] NCCL INFO 2 coll channels, 0 nvls channels, 2 p2p channels, 2 p2p channels per peer
"""

SOCKET_FALLBACK = """\
gpu-b:900:900 [0] NCCL INFO Bootstrap : Using eth0:10.1.0.12<0>
gpu-b:900:960 [0] NCCL INFO NET/IB : No device found.
gpu-b:900:960 [0] NCCL INFO NET/Socket : Using [0]eth0:10.1.0.12<0>
gpu-b:900:960 [0] NCCL INFO Using network Socket
gpu-b:900:960 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [send] via NET/Socket/0
gpu-b:900:960 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[0] [receive] via NET/Socket/0
"""

# Older NCCL prints the Socket device list even when it then uses IB: the network NCCL picked decides.
IB_WITH_SOCKET_LISTED = """\
n1:20:289 [0] NCCL INFO NET/Socket : Using [0]ib0:192.168.11.1<0>
n1:20:289 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:192.168.11.1<0>
n1:20:289 [0] NCCL INFO Using network IB
"""

NVLS_SINGLE_NODE = """\
h200:77:77 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_3:1/IB [RO]; OOB ens1:10.0.0.5<0>
h200:77:90 [0] NCCL INFO Using network IB
h200:77:90 [0] NCCL INFO NVLS multicast support is available on dev 0
h200:77:90 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read
h200:78:91 [1] NCCL INFO Channel 00 : 1[1] -> 0[0] via SHM/direct/direct
h200:77:90 [0] NCCL INFO 24 coll channels, 16 nvls channels, 32 p2p channels, 32 p2p channels per peer
"""

EFA_PLUGIN = """\
p5-1:310:318 [0] NCCL INFO NET/Plugin: Loaded net plugin Libfabric (v9)
p5-1:310:318 [0] NCCL INFO NET/OFI Selected Provider is efa (found 32 nics)
p5-1:310:318 [0] NCCL INFO Using network Libfabric
p5-1:310:318 [0] NCCL INFO Channel 00/0 : 8[0] -> 0[0] [receive] via NET/Libfabric/0/GDRDMA
"""

SHARP_PLUGIN = """\
x:1:1 [0] NCCL INFO NET/Plugin: Loaded net plugin NCCL RDMA Plugin v8 (v8)
x:1:2 [0] NCCL INFO NET/IB : Using [0]ibp0:1/IB/SHARP [1]ibp1:1/IB/SHARP [RO]; OOB eth0:10.7.1.3<0>
x:1:2 [0] NCCL INFO Using network IBext_v8
x:1:2 [0] NCCL INFO Channel 00/0 : 1[1] -> 9[1] [send] via NET/IBext_v8/1/GDRDMA
"""


def test_roce_between_nodes_with_gpudirect():
    transport = parse_nccl_log(ROCE_TWO_NODES)
    assert transport.network == "RoCE"
    assert transport.devices == ["mlx5_0:1/RoCE", "mlx5_1:1/RoCE"]
    assert transport.paths == ["NET/IB", "P2P/IPC"]
    assert transport.gpudirect_rdma and not transport.socket_fallback
    assert transport.summary() == "RoCE (NET/IB, P2P/IPC, GDRDMA)"


def test_socket_fallback_is_seen_in_the_network_and_the_channels():
    transport = parse_nccl_log(SOCKET_FALLBACK)
    assert transport.network == "Socket" and transport.paths == ["NET/Socket"]
    assert transport.socket_fallback
    channels_only = parse_nccl_log("\n".join(SOCKET_FALLBACK.splitlines()[4:]))
    assert channels_only.network == "Socket" and channels_only.socket_fallback


def test_the_picked_network_wins_over_the_listed_socket_devices():
    transport = parse_nccl_log(IB_WITH_SOCKET_LISTED)
    assert transport.network == "IB" and not transport.socket_fallback
    one_rank_fell_back = IB_WITH_SOCKET_LISTED + "n1:21:290 [1] NCCL INFO Using network Socket\n"
    assert parse_nccl_log(one_rank_fell_back).network == "Socket"


def test_nvls_and_intra_node_paths():
    transport = parse_nccl_log(NVLS_SINGLE_NODE)
    assert transport.paths == ["NVLS", "P2P/CUMEM", "SHM"]
    assert transport.network == "IB" and not transport.gpudirect_rdma


def test_net_plugins_efa_and_sharp():
    efa = parse_nccl_log(EFA_PLUGIN)
    assert (efa.network, efa.plugin, efa.paths) == ("EFA", "Libfabric", ["NET/Libfabric"])
    sharp = parse_nccl_log(SHARP_PLUGIN)
    assert (sharp.network, sharp.plugin) == ("IB", "IBext_v8")
    assert sharp.devices == ["ibp0:1/IB", "ibp1:1/IB"]


def test_no_nccl_lines_is_unknown():
    transport = parse_nccl_log("[rank0]: nothing from NCCL here\nTraceback? no\n")
    assert transport.network == "" and transport.summary() == "unknown"


def test_rule_fails_on_socket_where_rdma_is_declared_and_passes_on_rdma():
    assert rdma_rule(parse_nccl_log(SOCKET_FALLBACK), "train-a", "gpu-b").verdict == "fail"
    assert "fell back to Socket" in rdma_rule(parse_nccl_log(SOCKET_FALLBACK), "train-a", "gpu-b").reason
    assert rdma_rule(parse_nccl_log(ROCE_TWO_NODES), "train-a", "gpu-a").verdict == "pass"
    assert rdma_rule(parse_nccl_log(EFA_PLUGIN), "train-a", "p5-1").verdict == "pass"
    unverified = rdma_rule(parse_nccl_log(""), "train-a", "gpu-c")
    assert unverified.verdict == "fail" and "unverified" in unverified.reason


def test_rule_is_skipped_with_its_reason_for_gloo_and_without_rdma():
    gloo = rdma_rule(gloo_transport(), "train-a", "local")
    assert gloo.verdict == "skipped" and "gloo" in gloo.reason
    assert rdma_rule(parse_nccl_log(SOCKET_FALLBACK), None, "gpu-b").verdict == "skipped"


def test_record_marks_the_node_that_fell_back(tmp_path):
    good, bad = tmp_path / "a.log", tmp_path / "b.log"
    good.write_text(ROCE_TWO_NODES)
    bad.write_text(SOCKET_FALLBACK)
    result = CheckResult("allreduce_multinode")
    result.details["nodes"] = [{"node": 0, "host": "gpu-a", "state": "succeeded"},
                               {"node": 1, "host": "gpu-b", "state": "succeeded"}]
    record_transport(result, "nccl", [("gpu-a", good), ("gpu-b", bad)], "train-a")
    assert result.status is Status.FAIL and "gpu-b: NCCL fell back to Socket" in result.reason
    rows = result.details["nodes"]
    assert rows[0]["transport"].startswith("RoCE") and "problem" not in rows[0]
    assert rows[1]["transport"].startswith("Socket") and "fell back to Socket" in rows[1]["problem"]
    runs = result.details["nccl_transport"]["runs"]
    assert [run["rule"]["verdict"] for run in runs] == ["pass", "fail"]


def test_record_for_gloo_passes_and_says_why_the_rule_was_skipped(tmp_path):
    result = CheckResult("allreduce")
    record_transport(result, "gloo", [("local", tmp_path / "missing.log")], "train-a")
    assert result.status is Status.PASS
    run = result.details["nccl_transport"]["runs"][0]
    assert run["network"] == "TCP" and run["rule"]["verdict"] == "skipped"
