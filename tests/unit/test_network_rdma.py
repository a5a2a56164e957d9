"""The network check's RDMA part: ib_write_bw's report parsed (excerpts written for these tests in perftest's
output format), the per-node probe and which pairs are measured or skipped, and the command lines."""

from __future__ import annotations

import pytest

from dcforge.steps.network_rdma import (RdmaProbe, pair_command, pair_problem, parse_ib_write_bw, parse_probe,
                                         probe_command)

CLIENT_IB = """\
---------------------------------------------------------------------------------------
                    RDMA_Write BW Test
 Dual-port       : OFF          Device         : mlx5_2
 Number of qps   : 1            Transport type : IB
 Connection type : RC           Using SRQ      : OFF
 TX depth        : 128
 CQ Moderation   : 1
 Mtu             : 4096[B]
 Link type       : IB
 Max inline data : 0[B]
 rdma_cm QPs     : OFF
 Data ex. method : Ethernet
---------------------------------------------------------------------------------------
 local address: LID 0x11 QPN 0x01a2 PSN 0x3f00aa RKey 0x1fffbd VAddr 0x007f1200000000
 remote address: LID 0x2c QPN 0x01b7 PSN 0x9a11c0 RKey 0x1fffbd VAddr 0x007f3400000000
---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]
 65536      1432118          0.00               375.42  \t\t   0.716059
---------------------------------------------------------------------------------------
"""

CLIENT_ROCE_MB = """\
 Link type       : Ethernet
 GID index       : 3
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 65536      5000             11000.10            10990.00            0.175840
"""


def test_ib_write_bw_report_row():
    figures = parse_ib_write_bw(CLIENT_IB)
    assert figures.message_bytes == 65536 and figures.iterations == 1432118
    assert figures.bw_average_gbps == pytest.approx(375.42) and figures.bw_peak_gbps == 0.0
    assert figures.msg_rate_mpps == pytest.approx(0.716059) and figures.link_type == "IB"


def test_ib_write_bw_without_gbits_or_without_a_row_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"MB/sec, expected Gb/sec"):
        parse_ib_write_bw(CLIENT_ROCE_MB)
    with pytest.raises(ValueError, match=r"no result row .*Couldn't connect to 10.0.0.2:18515"):
        parse_ib_write_bw(" Link type       : Ethernet\nCouldn't connect to 10.0.0.2:18515\n")


def test_probe_lines_and_why_a_node_cannot_take_part():
    assert parse_probe("mlx5_0 mlx5_1 \nyes\n") == RdmaProbe(("mlx5_0", "mlx5_1"), True)
    empty = parse_probe("\nyes\n")
    assert empty == RdmaProbe((), True)
    assert empty.problem("gpu-1") == "no RDMA device on gpu-1 (/sys/class/infiniband is empty)"
    assert "perftest" in parse_probe("mlx5_0 \nno\n").problem("gpu-2")
    assert parse_probe("") == RdmaProbe((), False)


def test_a_pair_is_skipped_naming_each_node_without_rdma():
    probes = {"a": RdmaProbe(("mlx5_0",), True), "b": RdmaProbe((), True), "c": RdmaProbe(("mlx5_0",), False)}
    assert pair_problem(probes, ["a", "a"]) == ""
    assert pair_problem(probes, ["a", "b"]) == "no RDMA device on b (/sys/class/infiniband is empty)"
    assert pair_problem(probes, ["b", "c"]).count(";") == 1


def test_commands_are_executor_templates():
    server_and_client = pair_command(3, "mlx5_0", 3, 50)[2]
    assert "exec ib_write_bw -F --report_gbits -D 3 -p {port[rdma]} -d mlx5_0 -x 3;" in server_and_client
    assert "{leader_address} > {volume[results]}/ib_write_bw.txt" in server_and_client
    assert " -d " not in pair_command(2, None, None, 50)[2]
    assert "/sys/class/infiniband" in probe_command()[2]


def test_rdma_is_declared_by_the_acceptance_pool():
    from dcforge.steps.rdma import declared_rdma_pool
    from dcforge.spec import load_environment
    from dcforge.spec.models import Environment

    assert declared_rdma_pool(load_environment("local").spec) is None
    prod = load_environment("prod").spec
    assert declared_rdma_pool(prod) == prod.acceptance_pool.name and prod.acceptance_pool.rdma
    data = prod.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "pool": "infer-l40s"}
    assert declared_rdma_pool(Environment.model_validate(data)) is None
