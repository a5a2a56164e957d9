"""Which transport NCCL used in a collective run, read from its `NCCL_DEBUG=INFO` lines, and the RDMA rule.

The all-reduce workload (workloads/allreduce.py) turns NCCL's INFO output on when its backend is NCCL; the checks
hand the ranks' logs here. NCCL's INFO lines (`host:pid:tid [dev] NCCL INFO <message>`) that matter:

- `Using network <name>`: the network NCCL picked for traffic between nodes: `IB` (its InfiniBand verbs
  transport, also RoCE), `Socket` (plain TCP: the fallback), or a net plugin's name (`IBext_v8`, `Libfabric`,
  `AWS Libfabric`);
- `NET/IB : Using [0]mlx5_0:1/RoCE [1]mlx5_1:1/IB ...`: the verbs devices and their link layer (IB or RoCE);
- `NET/OFI Selected Provider is efa ...`: the aws-ofi-nccl plugin running over AWS EFA;
- `Channel 00/0 : 0[0] -> 1[1] [send] via NET/IB/0/GDRDMA`, `... via P2P/IPC`, `... via SHM/direct/direct`:
  the transport of each ring/tree connection actually set up (NET/<name> between nodes, P2P over NVLink or
  PCIe and SHM within a node; `/GDRDMA` is GPUDirect RDMA);
- `N coll channels, M nvls channels, ...`: M > 0 means NVLink SHARP (NVLS) collectives are in use.

The rule (docs/metrics.md#nccl-transport): where the pool declares RDMA (`gpuPools[].rdma`), NCCL must not have
picked Socket nor connected any channel over NET/Socket: that silent fallback costs two orders of magnitude of
bandwidth. NCCL output that says neither is "unverified", which fails the same way (the run cannot prove RDMA).
With gloo (CPU) the transport is gloo's TCP and the rule is skipped with that reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NCCL_DEBUG_ENV = {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET,ENV"}
"""What the all-reduce workload sets for NCCL: INFO level; INIT and NET carry every line parsed here."""

SOCKET = "Socket"
_INFO = re.compile(r"NCCL INFO (?P<message>.*)$")
_USING_NETWORK = re.compile(r"^Using network (?P<name>.+?)\s*$")
_IB_DEVICES = re.compile(r"^NET/IB ?: Using (?P<devices>.*?)(?:;|$)")
_IB_DEVICE = re.compile(r"\[\d+\](?P<device>\S+?:\d+)/(?P<link>IB|RoCE)")
_OFI_PROVIDER = re.compile(r"^NET/OFI Selected [Pp]rovider is (?P<provider>[\w-]+)")
_CHANNEL = re.compile(r"^Channel \d+(?:/\d+)? : .* via (?P<path>.+?)\s*$")
_NVLS_CHANNELS = re.compile(r"\b(?P<count>\d+) nvls channels\b")


@dataclass
class NcclTransport:
    """The transport of one collective run (one log: a node's ranks, or all ranks of a single-node run)."""

    backend: str
    """`nccl` or `gloo`."""
    network: str = ""
    """What NCCL picked between nodes: `IB`, `RoCE`, `EFA`, `Socket`, a plugin's name; `TCP` for gloo; '' when
    the log does not say."""
    plugin: str = ""
    """The net plugin's own name when not NCCL's built-in IB or Socket (`Libfabric`, `IBext_v8`)."""
    devices: list[str] = field(default_factory=list)
    """RDMA devices NCCL listed (`mlx5_0:1/RoCE`)."""
    paths: list[str] = field(default_factory=list)
    """Distinct channel transports set up (`P2P/IPC`, `SHM`, `NET/IB`, `NET/Socket`, `NVLS`)."""
    gpudirect_rdma: bool = False
    """A NET channel used GPUDirect RDMA (`/GDRDMA`)."""

    @property
    def socket_fallback(self) -> bool:
        return self.network == SOCKET or f"NET/{SOCKET}" in self.paths

    def summary(self) -> str:
        """One short phrase for tables: `RoCE (NET/IB, P2P/IPC, GDRDMA)`."""
        if not self.network and not self.paths:
            return "unknown"
        extras = self.paths + (["GDRDMA"] if self.gpudirect_rdma else [])
        return (self.network or "?") + (f" ({', '.join(extras)})" if extras else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary(), "socket_fallback": self.socket_fallback}


def gloo_transport() -> NcclTransport:
    return NcclTransport(backend="gloo", network="TCP")


def _path_name(via: str) -> str:
    """`NET/IB/0/GDRDMA` -> `NET/IB`; `P2P/IPC/read` -> `P2P/IPC`; `SHM/direct/direct` -> `SHM`;
    `P2P/direct pointer` -> `P2P/direct`; a plugin's `NET/AWS Libfabric/0` -> `NET/AWS Libfabric`."""
    parts = via.split("/")
    if parts[0] == "NET" and len(parts) > 1:
        return f"NET/{parts[1]}"
    if parts[0] == "P2P" and len(parts) > 1:
        return f"P2P/{parts[1].split()[0]}"
    return parts[0].split()[0]


def _network_kind(name: str, devices: list[str], ofi_provider: str) -> tuple[str, str]:
    """(network, plugin) from `Using network <name>`, the verbs devices' link layers and the OFI provider."""
    links = {device.rsplit("/", 1)[-1] for device in devices}
    verbs = "RoCE" if links == {"RoCE"} else "IB" if links else ""
    if name == SOCKET:
        return SOCKET, ""
    if name == "IB":
        return verbs or "IB", ""
    if ofi_provider == "efa" or "Libfabric" in name:
        return ("EFA" if ofi_provider == "efa" else f"Libfabric/{ofi_provider or '?'}"), name
    return verbs or name, name  # a verbs plugin (IBext_v8: nccl-rdma-sharp-plugins) or another plugin


def parse_nccl_log(text: str) -> NcclTransport:
    """The transport of the NCCL INFO lines in `text` (other lines are ignored; several ranks may interleave)."""
    names: dict[str, None] = {}
    ofi_provider = ""
    devices: dict[str, None] = {}
    paths: dict[str, None] = {}
    gdr, nvls = False, False
    for line in text.splitlines():
        found = _INFO.search(line)
        if not found:
            continue
        message = found.group("message").strip()
        if match := _USING_NETWORK.match(message):
            names[match.group("name")] = None
        elif match := _IB_DEVICES.match(message):
            devices.update({f"{d.group('device')}/{d.group('link')}": None
                            for d in _IB_DEVICE.finditer(match.group("devices"))})
        elif match := _OFI_PROVIDER.match(message):
            ofi_provider = match.group("provider")
        elif match := _CHANNEL.match(message):
            via = match.group("path")
            paths[_path_name(via)] = None
            gdr = gdr or via.endswith("/GDRDMA")
        elif (match := _NVLS_CHANNELS.search(message)) and int(match.group("count")) > 0:
            nvls = True
    if nvls:
        paths["NVLS"] = None
    # ranks print their own line: one rank on Socket is a fallback whatever the others picked
    name = SOCKET if SOCKET in names else next(reversed(names), "")
    network, plugin = _network_kind(name, list(devices), ofi_provider) if name else ("", "")
    if not network and f"NET/{SOCKET}" in paths:
        network = SOCKET
    return NcclTransport("nccl", network, plugin, list(devices), sorted(paths), gdr)


@dataclass(frozen=True)
class TransportVerdict:
    verdict: str
    """`pass`, `fail` or `skipped`."""
    reason: str


def rdma_rule(transport: NcclTransport, rdma_pool: str | None, where: str) -> TransportVerdict:
    """The RDMA rule for one run; `rdma_pool` names the pool that declares RDMA (None: none does)."""
    if transport.backend != "nccl":
        return TransportVerdict("skipped", f"{transport.backend} on CPU: collectives run over TCP sockets, NCCL's "
                                           "RDMA transport does not apply")
    if rdma_pool is None:
        return TransportVerdict("skipped", "the pool declares no RDMA (gpuPools[].rdma): any transport is accepted")
    if transport.socket_fallback:
        return TransportVerdict("fail", f"{where}: NCCL fell back to Socket although pool {rdma_pool} declares "
                                        "RDMA (NCCL_DEBUG=INFO: NET/IB found no usable device, or it was disabled)")
    if not transport.network:
        return TransportVerdict("fail", f"{where}: NCCL's network is unverified (no 'Using network' line in its "
                                        f"INFO output) although pool {rdma_pool} declares RDMA")
    return TransportVerdict("pass", f"{where}: NCCL used {transport.summary()}")


def read_log(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def record_transport(result, backend: str, logs: list[tuple[str, Path | None]], rdma_pool: str | None) -> None:
    """Parse each log ((host, path): a node's log, or `local` for a single-node run), apply the rule and record
    `details.nccl_transport` (per log: the transport and its verdict). Rows of `details.nodes` of that host get
    `transport` and, where the rule fails, `problem` (dcforge/report/nodes.py). A failing verdict fails the check."""
    runs = []
    for host, path in logs:
        transport = parse_nccl_log(read_log(path)) if backend == "nccl" else gloo_transport()
        verdict = rdma_rule(transport, rdma_pool, host)
        runs.append({"host": host, **transport.to_dict(), "rule": asdict(verdict)})
        if verdict.verdict == "fail":
            result.fail(verdict.reason)
        for row in result.details.get("nodes") or []:
            if isinstance(row, dict) and row.get("host") == host:
                row["transport"] = transport.summary()
                if verdict.verdict == "fail":
                    row["problem"] = verdict.reason.split(": ", 1)[-1]
    result.details["nccl_transport"] = {"backend": backend, "rdma_pool": rdma_pool, "runs": runs}
