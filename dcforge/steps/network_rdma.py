"""The RDMA half of the `network` check: `ib_write_bw` (perftest) between every pair of nodes where the spec
declares RDMA for the acceptance pool (docs/metrics.md#network).

First one probe on every node lists its RDMA devices (/sys/class/infiniband: InfiniBand, RoCE and EFA devices)
and whether ib_write_bw is installed; a pair is measured only when both of its nodes have both, otherwise it is
skipped with the reason naming the node. A measured pair: the pair's second node serves (`ib_write_bw` without a
peer), its first node connects to it (retrying until the server listens) for `seconds` (`-D`), both with
`--report_gbits`; bandwidth = the client's "BW average" of that test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dcforge.steps.rdma import SYS_INFINIBAND
from dcforge.executors.base import ExecutorError, Role, VolumePurpose, Workload

RDMA_PORT = "rdma"
PROBE_FILE = "rdma-probe.txt"
OUTPUT_FILE = "ib_write_bw.txt"
PERFTEST_HINT = "ib_write_bw is not installed (Debian package perftest, make system-deps)"


@dataclass(frozen=True)
class RdmaProbe:
    """What one node has for RDMA."""

    devices: tuple[str, ...]
    perftest: bool

    def problem(self, host: str) -> str:
        """Why this node cannot take part, or ''."""
        if not self.devices:
            return f"no RDMA device on {host} ({SYS_INFINIBAND} is empty)"
        if not self.perftest:
            return f"{host}: {PERFTEST_HINT}"
        return ""


def probe_command() -> tuple[str, ...]:
    """Line 1: the node's RDMA devices; line 2: `yes` when ib_write_bw is on PATH."""
    script = (f"ls {SYS_INFINIBAND} 2>/dev/null | tr '\\n' ' ' > {{volume[results]}}/{PROBE_FILE}; echo >> "
              f"{{volume[results]}}/{PROBE_FILE}; if command -v ib_write_bw >/dev/null; then echo yes; else echo no; "
              f"fi >> {{volume[results]}}/{PROBE_FILE}")
    return ("sh", "-c", script)


def parse_probe(text: str) -> RdmaProbe:
    lines = text.splitlines() + ["", ""]
    return RdmaProbe(tuple(lines[0].split()), lines[1].strip() == "yes")


def pair_command(seconds: int, device: str | None, gid_index: int | None, retry_s: float) -> tuple[str, ...]:
    """Node 0 serves once, node 1 measures against it, retrying for `retry_s` until the server listens (as the
    iperf3 pair does: `dcforge.checks.network.pair_command`)."""
    options = f"-F --report_gbits -D {seconds} -p {{port[{RDMA_PORT}]}}"
    options += f" -d {device}" if device else ""
    options += f" -x {gid_index}" if gid_index is not None else ""
    script = (f"if [ {{node_index}} = 0 ]; then exec ib_write_bw {options}; fi; "
              f"end=$(( $(date +%s) + {max(1, int(retry_s))} )); while [ $(date +%s) -lt $end ]; do "
              f"ib_write_bw {options} {{leader_address}} "
              f"> {{volume[results]}}/{OUTPUT_FILE} 2>&1 && exit 0; sleep 0.2; done; exit 1")
    return ("sh", "-c", script)


@dataclass(frozen=True)
class IbWriteBw:
    """The result row of one ib_write_bw test (`--report_gbits`)."""

    message_bytes: int
    iterations: int
    bw_peak_gbps: float
    bw_average_gbps: float
    msg_rate_mpps: float
    link_type: str
    """`IB` or `Ethernet` (RoCE), from the header; '' when absent."""


_HEADER = re.compile(r"#bytes\s+#iterations\s+BW peak\[(?P<unit>[^\]]+)\]\s+BW average\[(?P=unit)\]")
_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")
_LINK = re.compile(r"^\s*Link type\s*:\s*(\S+)", re.MULTILINE)


def parse_ib_write_bw(text: str) -> IbWriteBw:
    """The figures of ib_write_bw's report: the row under the `#bytes #iterations BW peak[Gb/sec] ...` header.
    ValueError (one line) when there is none or it is not in Gb/sec."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        header = _HEADER.search(line)
        if not header:
            continue
        if header.group("unit") != "Gb/sec":
            raise ValueError(f"ib_write_bw reported {header.group('unit')}, expected Gb/sec (--report_gbits)")
        for row_line in lines[number + 1:]:
            if row := _ROW.match(row_line):
                link = _LINK.search(text)
                return IbWriteBw(int(row.group(1)), int(row.group(2)), float(row.group(3)), float(row.group(4)),
                                 float(row.group(5)), link.group(1) if link else "")
        break
    tail = " | ".join(line.strip() for line in lines[-3:] if line.strip())
    raise ValueError(f"no result row in ib_write_bw's output (last lines: {tail or 'none'})")


def probe_nodes(executor, count: int, names: list[str], workdir, timeout_s: float) -> dict[str, RdmaProbe]:
    """Host name -> its probe, one workload over every node."""
    workload = Workload("rdma-probe", (Role("probe", probe_command(), nodes=count),),
                        volumes=(VolumePurpose.RESULTS,), timeout_s=timeout_s)
    with executor.start(workload, workdir / "rdma-probe") as execution:
        outcome = execution.wait(timeout_s)
        if not outcome.succeeded:
            raise ExecutorError(f"RDMA probe: {outcome.failure_summary()}")
        return {names[index]: parse_probe(execution.read_result("probe", index, PROBE_FILE).decode(errors="replace"))
                for index in range(count)}


def pair_problem(probes: dict[str, RdmaProbe], pair: list[str]) -> str:
    """Why a pair (host names) cannot be measured, or ''."""
    return "; ".join(problem for host in pair if (problem := probes[host].problem(host)))
