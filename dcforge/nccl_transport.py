"""Which transport NCCL used in a collective run, read from its `NCCL_DEBUG=INFO` lines, and the RDMA rule.

The all-reduce workload (workloads/allreduce.py) turns NCCL's INFO output on when its backend is NCCL; the checks
hand the ranks' logs here. Every NCCL release from 2.4 on is read (the corpus in tests/unit/real_logs/nccl/ holds
real logs of each form). What NCCL prints about the network between nodes, most trusted first:

1. `Using network <name>` (2.6 and later): the network a rank picked: `IB` (verbs: InfiniBand or RoCE), `Socket`
   (plain TCP, the fallback), or a net plugin's name (`IBext`, `IBext_v8`: nccl-rdma-sharp-plugins; `Libfabric`,
   `AWS Libfabric`: aws-ofi-nccl; `FasTrak`, `GPUDirectTCPX`: Google's plugins);
2. the connections actually set up: `Channel 00/0 : 0[0] -> 1[1] [send] via NET/IB/0/GDRDMA` (2.7+),
   `Channel 01 : 2[c7000] -> 0[87000] [receive] via NET/IB/5/GDRDMA` (2.6), `Ring 00 : 7 -> 8 [send] via
   NET/AWS Libfabric/0` (2.4, 2.5) and `CollNet 00/0 : 0 [receive] via COLLNET/SHARP/1/GDRDMA` (SHARP in-network
   reduction); `/GDRDMA` and `/GDRDMA/Shared` are GPUDirect RDMA, `P2P/...` and `SHM/...` stay within a node;
3. the device lists: `NET/IB : Using [0]mlx5_0:1/IB ...` (verbs devices and their link layer: IB or RoCE),
   `NET/OFI Selected Provider is efa` (aws-ofi-nccl over AWS EFA), and `NET/IB : No device found.` followed by
   `NET/Socket : Using ...`. Before 2.6 every rank also lists its Socket devices when it then uses IB, so a
   `NET/Socket : Using` line alone says Socket only when no rank of the log names anything else.

Each rank (`host:pid`) is judged on its own, so one rank that fell back to Socket among many on IB is named.
NVLink SHARP (NVLS) is reported only where it was set up (`NVLS comm ...` lines, or `N nvls channels` with N > 0)
and not excluded by `NCCL_ALGO` nor shown unused in the algorithm table.

The rule (docs/verdicts.md#nccl-transport): where the pool declares RDMA (`gpuPools[].rdma`), no rank may have picked
Socket nor connected a channel over NET/Socket. A log in which no line speaks of the transport between nodes is
"unverified", which fails the same way (the run cannot prove RDMA), with that reason. With gloo (CPU) the transport
is gloo's TCP and the rule is skipped with that reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dcforge.findings import Action, Severity

NCCL_DEBUG_ENV = {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET,ENV"}
"""What the all-reduce workload sets for NCCL: INFO level; INIT and NET carry every line parsed here."""

SOCKET = "Socket"
TCP_ONLY = (SOCKET, "FastSocket")
"""Networks that carry NCCL's traffic over TCP sockets (FastSocket: GCP's TCP plugin), not RDMA."""
TCP_ONLY_OFI_PROVIDERS = ("tcp", "sockets", "udp")
"""libfabric providers of aws-ofi-nccl that run over TCP/UDP, not RDMA (efa and verbs are RDMA)."""
# `host:pid:tid [dev] NCCL INFO <message>`; some logs (copied from a wrapper) carry the message alone.
_PREFIXED = re.compile(r"(?P<host>[^\s:]+):(?P<pid>\d+):\d+ \[\d+\] NCCL INFO (?P<message>.*)$")
_BARE_INFO = re.compile(r"NCCL INFO (?P<message>.*)$")
_VERSION = re.compile(r"NCCL version (?P<version>\d+\.\d+\.\d+)")
_USING_NETWORK = re.compile(r"^Using network (?P<name>.+?)\s*$")
_IB_DEVICES = re.compile(r"^NET/IB ?: Using (?P<devices>.*?)(?:;|$)")
_IB_DEVICE = re.compile(r"\[\d+\](?P<device>\S+?:\d+)/(?P<link>IB|RoCE)")
_IB_NONE = re.compile(r"^NET/IB ?: No device found")
_SOCKET_DEVICES = re.compile(r"^NET/Socket ?: Using \[")
_OFI_PROVIDER = re.compile(r"^NET/OFI Selected [Pp]rovider is (?P<provider>[\w-]+)")
_CONNECTION = re.compile(r"^(?:Channel|Ring|CollNet) \d+(?:/\d+)? : .*\bvia (?P<path>.+?)\s*$")
_NVLS_CHANNELS = re.compile(r"\b(?P<count>\d+) nvls channels\b")
_NVLS_COMM = re.compile(r"^NVLS comm 0x")
_ALGO = re.compile(r"^NCCL_ALGO set by environment to (?P<algos>.*)$")
_ALGO_TABLE_HEADER = re.compile(r"\bFunction \|.*\bNVLS\b")
_ALGO_TABLE_ROW = re.compile(r"^\s*(?:Broadcast|Reduce|AllGather|ReduceScatter|AllReduce) \|")
# Net plugins that move data over RDMA hardware; anything else unnamed is judged by its own words.
_VERBS_PLUGINS = ("IB", "RDMA")
_OFI_PLUGINS = ("Libfabric", "OFI")


@dataclass
class RankEvidence:
    """What one rank (`host:pid`) printed about its network."""

    picked: str = ""
    """`Using network <name>`."""
    net_paths: set[str] = field(default_factory=set)
    """NET/<name> and COLLNET/<name> connections it set up."""
    ib_devices: list[str] = field(default_factory=list)
    no_ib_device: bool = False
    socket_devices: bool = False
    ofi_provider: str = ""

    def network_name(self) -> tuple[str, str]:
        """(name, how it is known) by the order of trust; ('', '') when this rank said nothing."""
        if self.picked:
            return self.picked, "Using network"
        nets = sorted(path.split("/", 1)[1] for path in self.net_paths if path.startswith("NET/"))
        if f"NET/{SOCKET}" in self.net_paths:
            return SOCKET, "NET channel"
        if nets:
            return nets[0], "NET channel"
        if any(path.startswith("COLLNET/") for path in self.net_paths):
            return "IB", "CollNet channel"  # SHARP in-network reduction runs over InfiniBand
        if self.ib_devices:
            return "IB", "NET/IB device list"
        if self.ofi_provider:
            return "Libfabric", "NET/OFI provider"
        if self.no_ib_device:
            return SOCKET, "NET/IB found no device"  # without a plugin NCCL then uses Socket
        return "", ""


@dataclass
class NcclTransport:
    """The transport of one collective run (one log: a node's ranks, or all ranks of a single-node run)."""

    backend: str
    """`nccl` or `gloo`."""
    network: str = ""
    """Between nodes: `IB`, `RoCE`, `EFA`, `OFI` (aws-ofi-nccl, provider not printed), `Socket`, another plugin's
    name; `TCP` for gloo; '' when no line of the log speaks of it."""
    plugin: str = ""
    """The net plugin's own name when not NCCL's built-in IB or Socket (`AWS Libfabric`, `IBext_v8`)."""
    devices: list[str] = field(default_factory=list)
    """RDMA devices NCCL listed (`mlx5_0:1/RoCE`)."""
    paths: list[str] = field(default_factory=list)
    """Distinct connection transports set up (`P2P/IPC`, `SHM`, `NET/IB`, `NET/Socket`, `COLLNET/SHARP`, `NVLS`)."""
    gpudirect_rdma: bool = False
    """A NET or CollNet connection used GPUDirect RDMA (`/GDRDMA`, `/GDRDMA/Shared`)."""
    collnet: str = ""
    """The CollNet (in-network reduction) plugin whose connections were set up: `SHARP`."""
    nvls: bool = False
    """NVLink SHARP set up and not excluded (see the module docstring)."""
    version: str = ""
    """The NCCL version printed (`2.19.3`), '' when not printed."""
    socket_ranks: list[str] = field(default_factory=list)
    """Ranks (`host:pid`) that used Socket while others of the log used an RDMA network."""
    evidence: str = ""
    """Which kind of line the network was read from (`Using network`, `NET channel`, ...)."""

    @property
    def socket_fallback(self) -> bool:
        """NCCL's traffic between nodes went over TCP sockets (any rank), not RDMA."""
        tcp_ofi = tuple(f"OFI/{provider}" for provider in TCP_ONLY_OFI_PROVIDERS)
        return (self.network in TCP_ONLY or self.network.startswith(tcp_ofi) or bool(self.socket_ranks)
                or f"NET/{SOCKET}" in self.paths)

    def summary(self) -> str:
        """One short phrase for tables: `RoCE (NET/IB, P2P/IPC, GDRDMA)`."""
        if not self.network and not self.paths:
            return "unknown"
        extras = self.paths + (["GDRDMA"] if self.gpudirect_rdma else [])
        head = self.network or "?"
        if self.socket_ranks and self.network != SOCKET:
            head += f", Socket on {', '.join(self.socket_ranks)}"
        return head + (f" ({', '.join(extras)})" if extras else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary(), "socket_fallback": self.socket_fallback}


def gloo_transport() -> NcclTransport:
    return NcclTransport(backend="gloo", network="TCP")


def _path_name(via: str) -> str:
    """`NET/IB/0/GDRDMA` -> `NET/IB`; `P2P/IPC/read` -> `P2P/IPC`; `SHM/direct/direct` -> `SHM`;
    `P2P/direct pointer` -> `P2P/direct`; `NET/AWS Libfabric/0` -> `NET/AWS Libfabric`;
    `COLLNET/SHARP/1/GDRDMA` -> `COLLNET/SHARP`."""
    parts = via.split("/")
    if parts[0] in ("NET", "COLLNET") and len(parts) > 1:
        return f"{parts[0]}/{parts[1]}"
    if parts[0] == "P2P" and len(parts) > 1:
        return f"P2P/{parts[1].split()[0]}"
    return parts[0].split()[0]


def _kind(name: str, devices: list[str], ofi_provider: str) -> tuple[str, str]:
    """(network, plugin) of a network name, given the verbs devices' link layers and the OFI provider."""
    links = {device.rsplit("/", 1)[-1] for device in devices}
    verbs = "RoCE" if links == {"RoCE"} else "IB"
    if name == SOCKET:
        return SOCKET, ""
    if name == "IB":
        return verbs, ""
    if any(word in name for word in _OFI_PLUGINS):
        return ("EFA" if ofi_provider == "efa" else f"OFI/{ofi_provider}" if ofi_provider else "OFI"), name
    if any(word in name for word in _VERBS_PLUGINS):
        return verbs, name  # a verbs plugin (IBext: nccl-rdma-sharp-plugins, "NCCL RDMA Plugin v6")
    return name, name  # another plugin (FasTrak, GPUDirectTCPX): named as it calls itself


def _message(line: str) -> tuple[str, str]:
    """(rank, message) of one line: rank `host:pid`, or '' when the line carries no prefix."""
    if found := _PREFIXED.search(line):
        return f"{found['host']}:{found['pid']}", found["message"].strip()
    if found := _BARE_INFO.search(line):
        return "", found["message"].strip()
    return "", line.strip()


def parse_nccl_log(text: str) -> NcclTransport:
    """The transport of the NCCL lines in `text` (other lines are ignored; ranks may interleave). Never raises on
    any text: what it cannot read it ignores."""
    ranks: dict[str, RankEvidence] = {}
    paths: dict[str, None] = {}
    gdr = nvls_set_up = nvls_excluded = in_algo_table = nvls_column_used = False
    nvls_column = -1
    version = ""
    for line in str(text).splitlines():
        if version == "" and (found := _VERSION.search(line)):
            version = found["version"]
        rank, message = _message(line)
        evidence = ranks.setdefault(rank, RankEvidence())
        if match := _USING_NETWORK.match(message):
            evidence.picked = match["name"]
        elif match := _IB_DEVICES.match(message):
            evidence.ib_devices += [f"{d['device']}/{d['link']}" for d in _IB_DEVICE.finditer(match["devices"])]
        elif _IB_NONE.match(message):
            evidence.no_ib_device = True
        elif _SOCKET_DEVICES.match(message):
            evidence.socket_devices = True
        elif match := _OFI_PROVIDER.match(message):
            evidence.ofi_provider = match["provider"]
        elif match := _CONNECTION.match(message):
            via = match["path"]
            name = _path_name(via)
            paths[name] = None
            if name.startswith(("NET/", "COLLNET/")):
                evidence.net_paths.add(name)
                gdr = gdr or "/GDRDMA" in via
        elif _NVLS_COMM.match(message):
            nvls_set_up = True
        elif (match := _NVLS_CHANNELS.search(message)) and int(match["count"]) > 0:
            nvls_set_up = True
        elif match := _ALGO.match(message):
            nvls_excluded = nvls_excluded or "nvls" not in match["algos"].lower()
        elif _ALGO_TABLE_HEADER.search(line):
            in_algo_table = True
            header = line.split("|")[-1].split()
            nvls_column = header.index("NVLS") if "NVLS" in header else -1
        elif in_algo_table and _ALGO_TABLE_ROW.match(line):
            cells = line.split("|")[-1].split()
            nvls_column_used = nvls_column_used or (0 <= nvls_column < len(cells) and cells[nvls_column] != "0")
        elif in_algo_table and line.strip() and "|" not in line:
            in_algo_table = False
    transport = _combine(ranks, version)
    transport.paths = sorted([*paths, *(["NVLS"] if nvls_set_up and not nvls_excluded else [])])
    transport.nvls = "NVLS" in transport.paths and (nvls_column == -1 or nvls_column_used)
    if not transport.nvls and "NVLS" in transport.paths:
        transport.paths.remove("NVLS")
    transport.gpudirect_rdma = gdr
    transport.collnet = next((p.split("/", 1)[1] for p in transport.paths if p.startswith("COLLNET/")), "")
    return transport


def _combine(ranks: dict[str, RankEvidence], version: str) -> NcclTransport:
    """One transport from every rank's evidence: a rank on Socket among ranks on RDMA is named."""
    devices = list(dict.fromkeys(d for e in ranks.values() for d in e.ib_devices))
    provider = next((e.ofi_provider for e in ranks.values() if e.ofi_provider), "")
    named = {rank: e.network_name() for rank, e in ranks.items()}
    spoken = {rank: name for rank, name in named.items() if name[0]}
    if not spoken:
        # before 2.6 every rank lists its Socket devices; alone they are the only word on the network
        listed = any(e.socket_devices for e in ranks.values())
        if listed:
            return NcclTransport("nccl", SOCKET, "", devices, version=version, evidence="NET/Socket device list")
        return NcclTransport("nccl", "", "", devices, version=version)
    socket_ranks = sorted(rank or "?" for rank, (name, _) in spoken.items() if name == SOCKET)
    others = [(name, how) for rank, (name, how) in spoken.items() if name != SOCKET]
    if not others:
        how = next(iter(spoken.values()))[1]
        return NcclTransport("nccl", SOCKET, "", devices, version=version, evidence=how)
    name, how = max(others, key=lambda item: _TRUST.index(item[1]))
    network, plugin = _kind(name, devices, provider)
    return NcclTransport("nccl", network, plugin, devices, version=version, socket_ranks=socket_ranks, evidence=how)


_TRUST = ["NET/IB found no device", "NET/OFI provider", "NET/IB device list", "CollNet channel", "NET channel",
          "Using network"]
"""Evidence kinds, least trusted first (RankEvidence.network_name)."""


@dataclass(frozen=True)
class TransportVerdict:
    verdict: str
    """`pass`, `fail` or `skipped`."""
    reason: str

    @property
    def severity(self) -> Severity:
        """As a finding (docs/verdicts.md): an unverified transport is missing evidence, which fails as well."""
        if self.verdict == "fail":
            return Severity.UNKNOWN if UNVERIFIED in self.reason else Severity.FAIL
        return Severity.PASS if self.verdict == "pass" else Severity.INFO

    @property
    def action(self) -> Action:
        return Action.CHECK_FABRIC if self.verdict == "fail" else Action.NONE

    def to_dict(self) -> dict[str, str]:
        return {**asdict(self), "severity": self.severity.value, "action": self.action.value}


UNVERIFIED = ("no line of NCCL's INFO output speaks of the transport between nodes (no 'Using network', NET or "
              "CollNet connection, nor NET/IB or NET/OFI device line)")


def rdma_rule(transport: NcclTransport, rdma_pool: str | None, where: str) -> TransportVerdict:
    """The RDMA rule for one run; `rdma_pool` names the pool that declares RDMA (None: none does)."""
    if transport.backend != "nccl":
        return TransportVerdict("skipped", f"{transport.backend} on CPU: collectives run over TCP sockets, NCCL's "
                                           "RDMA transport does not apply")
    if rdma_pool is None:
        return TransportVerdict("skipped", "the pool declares no RDMA (gpuPools[].rdma): any transport is accepted")
    if transport.socket_ranks and transport.network != SOCKET:
        return TransportVerdict("fail", f"{where}: NCCL ranks {', '.join(transport.socket_ranks)} fell back to "
                                        f"Socket while the others used {transport.network}, although pool "
                                        f"{rdma_pool} declares RDMA")
    if transport.socket_fallback and transport.network not in ("", SOCKET):
        return TransportVerdict("fail", f"{where}: NCCL's network {transport.network} runs over TCP, not RDMA, "
                                        f"although pool {rdma_pool} declares RDMA")
    if transport.socket_fallback:
        return TransportVerdict("fail", f"{where}: NCCL fell back to Socket although pool {rdma_pool} declares "
                                        "RDMA (NCCL_DEBUG=INFO: NET/IB found no usable device, or it was disabled)")
    if not transport.network:
        return TransportVerdict("fail", f"{where}: NCCL's network is unverified ({UNVERIFIED}) although pool "
                                        f"{rdma_pool} declares RDMA")
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
    `transport` and, where the rule fails, `problem` (dcforge/report/nodes.py) and `action` (check_fabric). A failing
    verdict fails the check."""
    runs = []
    for host, path in logs:
        transport = parse_nccl_log(read_log(path)) if backend == "nccl" else gloo_transport()
        verdict = rdma_rule(transport, rdma_pool, host)
        runs.append({"host": host, **transport.to_dict(), "rule": verdict.to_dict()})
        if verdict.verdict == "fail":
            result.fail(verdict.reason)
        for row in result.details.get("nodes") or []:
            if isinstance(row, dict) and row.get("host") == host:
                row["transport"] = transport.summary()
                if verdict.verdict == "fail":
                    row["problem"] = verdict.reason.split(": ", 1)[-1]
                    row["action"] = verdict.action.value
    result.details["nccl_transport"] = {"backend": backend, "rdma_pool": rdma_pool, "runs": runs}
