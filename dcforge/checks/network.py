"""`network`: TCP bandwidth and round-trip time between every pair of nodes, with iperf3 (JSON output).

For each pair (a, b), a < b, in turn (pairs run one after another so they do not share links): b runs
`iperf3 --server --one-off` on its address, a runs `iperf3 --client` against it for `seconds`, retrying until the
server listens. Bandwidth = iperf3's received bits/s of the whole test; RTT = the kernel's smoothed mean RTT of the
sending TCP socket (iperf3's `mean_rtt`, Linux). Per node: the best bandwidth of the pairs it is in (a pair is
as slow as its slower end, so a sound node has at least one fast pair); a node more than outlierFraction below
the median of those is an outlier. Where the spec declares RDMA for the acceptance pool, every pair is also
measured with ib_write_bw (dcforge/steps/network_rdma.py); a pair whose node has no RDMA device or no perftest is
not measured, and that node fails the check with the reason and a recommended action (declared but absent is never
a pass).
"""

from __future__ import annotations

import json
import shutil
import statistics

from pydantic import Field

from dcforge.executors.base import ExecutorError, Role, VolumePurpose, Workload
from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, CheckSkipped, Status
from dcforge.placement.naming import name_kubernetes_nodes, node_names
from dcforge.placement.naming import pair_executor as executor_for_pair
from dcforge.placement.targets import executor_for
from dcforge.steps import network_rdma as rdma
from dcforge.steps.rdma import UNMEASURED_RDMA_ACTION, declared_rdma_pool

IPERF_PORT = "iperf"


class NetworkCheckConfig(CheckConfig):
    nodes: int | None = Field(default=None, ge=2)
    """Nodes to measure; default every host of acceptance.hosts, every Ready node of the acceptance pool on target
    kubernetes (pinned by name), or 2 on target local."""
    seconds: int = Field(default=2, ge=1, le=60)
    """Length of each pair's iperf3 test."""
    outlier_fraction: float = Field(default=0.5, gt=0, lt=1)
    """A node is an outlier below (1 − outlierFraction) × the median of the per-node bandwidths."""
    pair_timeout_s: float = Field(default=60.0, gt=0)
    """Limit for each pair (the whole check has the runner's acceptance.timeoutsS.network)."""
    rdma_device: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    """RDMA device ib_write_bw uses on every node (`-d`, e.g. mlx5_0); default perftest's, the first one."""
    rdma_gid_index: int | None = Field(default=None, ge=0, le=255)
    """GID index for RoCE (`-x`); default perftest's choice."""


def pair_command(seconds: int, retry_s: float) -> tuple[str, ...]:
    """Node 0 serves once, node 1 measures against it, retrying for `retry_s` until the server listens: on a busy
    node the server's pod may start many seconds after the client's, and until it runs its Service refuses at
    once ("No route to host"), so a count of attempts would be spent in a few seconds (seen on a real cluster)."""
    script = ("if [ {node_index} = 0 ]; then exec iperf3 --server --one-off --bind {node_address} "
              "--port {port[%s]}; fi; "
              "end=$(( $(date +%%s) + %d )); while [ $(date +%%s) -lt $end ]; do "
              "iperf3 --client {leader_address} --port {port[%s]} --time %d --json "
              "> {volume[results]}/iperf.json && exit 0; sleep 0.2; done; exit 1"
              ) % (IPERF_PORT, max(1, int(retry_s)), IPERF_PORT, seconds)
    return ("sh", "-c", script)


class NetworkCheck:
    name = "network"
    description = "iperf3 between every pair of nodes: TCP bandwidth and RTT per pair, per-node outliers."
    Config = NetworkCheckConfig
    requires_declared_gpus = False  # it measures the network between the hosts
    metrics = (
        MetricSpec("tcp_gbps", "Gbit/s", "higher", "received bits / s of one iperf3 TCP test per pair",
                   "TCP bandwidth between two nodes", stats=("min", "median")),
        MetricSpec("rtt_us", "µs", "lower", "mean smoothed RTT of the sending socket (iperf3 mean_rtt) per pair",
                   "round-trip time between two nodes under load", stats=("max",)),
        MetricSpec("outliers", "nodes", "lower", "nodes whose best pair bandwidth < (1 − outlierFraction) × median",
                   "nodes well below the pool, even when they meet an absolute SLO"),
        MetricSpec("rdma_gbps", "Gbit/s", "higher", "BW average of one ib_write_bw test (--report_gbits) per pair",
                   "RDMA write bandwidth between two nodes (where the pool declares RDMA)", stats=("min", "median")),
    )

    def run(self, ctx: CheckContext, config: NetworkCheckConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        # target kubernetes: too few Ready nodes in the pool is an ExecutorError, the check's error (the runner)
        executor, count, _ = executor_for(ctx, self.name, config.nodes, pin=True)
        if executor.name == "local" and shutil.which("iperf3") is None:
            raise CheckSkipped("iperf3 is not installed (make system-deps)")
        names = node_names(executor, count)
        workdir = ctx.artefact_dir(self.name)
        pairs = []
        try:
            for a in range(count):
                for b in range(a + 1, count):
                    pairs.append(self._measure(ctx, executor, (a, b), names, config, workdir))
        except ExecutorError as error:
            result.status, result.reason = Status.ERROR, str(error)
            return result
        per_node = {node: max(p["tcp_gbps"] for p in pairs if names[node] in p["nodes"]) for node in range(count)}
        median = statistics.median(per_node.values())
        outliers = [n for n, value in per_node.items() if value < (1 - config.outlier_fraction) * median]
        bandwidths = [p["tcp_gbps"] for p in pairs]
        result.add_metric("tcp_gbps.min", min(bandwidths))
        result.add_metric("tcp_gbps.median", statistics.median(bandwidths))
        result.add_metric("rtt_us.max", max(p["rtt_us"] for p in pairs))
        result.add_metric("outliers", len(outliers))
        result.details["pairs"] = pairs
        result.details["nodes"] = [{"node": n, "host": names[n], "tcp_gbps_best": per_node[n],
                                    "outlier": n in outliers} for n in range(count)]
        name_kubernetes_nodes(executor, result)
        if outliers:
            result.fail("outliers: " + ", ".join(f"{names[n]} ({per_node[n]:.3g} Gbit/s, median {median:.3g})"
                                                 for n in outliers))
        try:
            self._rdma(ctx, executor, count, names, config, result)
        except ExecutorError as error:
            result.status, result.reason = Status.ERROR, str(error)
        return result

    def _rdma(self, ctx: CheckContext, executor, count: int, names: list[str], config: NetworkCheckConfig,
              result: CheckResult) -> None:
        """ib_write_bw per pair where RDMA is declared; `details.rdma` says what was measured or why not."""
        pool = declared_rdma_pool(ctx.env.spec)
        if pool is None:
            result.details["rdma"] = {"skipped": "the acceptance pool declares no RDMA (gpuPools[].rdma)"}
            return
        workdir = ctx.artefact_dir(self.name)
        probes = rdma.probe_nodes(executor, count, names, workdir,
                                  min(config.pair_timeout_s, max(1.0, ctx.remaining_s())))
        role = Role("rdma", rdma.pair_command(config.seconds, config.rdma_device, config.rdma_gid_index,
                                              config.pair_timeout_s - config.seconds - 5), nodes=2,
                    ports=(rdma.RDMA_PORT,))
        for pair in result.details["pairs"]:
            if problem := rdma.pair_problem(probes, pair["nodes"]):
                pair["rdma_skipped"] = problem
                ctx.log(f"RDMA {' -> '.join(pair['nodes'])} skipped: {problem}")
                continue
            client, server = (names.index(host) for host in pair["nodes"])
            output = self._run_pair(ctx, executor, (client, server), names, config, workdir, role,
                                    rdma.OUTPUT_FILE)
            try:
                figures = rdma.parse_ib_write_bw(output.decode(errors="replace"))
            except ValueError as error:
                raise ExecutorError(f"ib_write_bw {names[client]} -> {names[server]}: {error}") from None
            pair.update(rdma_gbps=figures.bw_average_gbps, rdma_link_type=figures.link_type)
        measured = [p["rdma_gbps"] for p in result.details["pairs"] if "rdma_gbps" in p]
        skipped = sorted({p["rdma_skipped"] for p in result.details["pairs"] if "rdma_skipped" in p})
        result.details["rdma"] = {"pool": pool, "devices": {host: list(p.devices) for host, p in probes.items()},
                                  "pairs_measured": len(measured), "skipped": "; ".join(skipped)}
        # declared but not measurable is a failing finding of the node, never a pass (docs/skips.md)
        unmeasured = {row["host"]: problem for row in result.details["nodes"]
                      if (problem := probes[row["host"]].problem(row["host"]))}
        for row in result.details["nodes"]:
            if row["host"] in unmeasured:
                row.update(problem=f"pool {pool!r} declares RDMA: {unmeasured[row['host']]}",
                           action=UNMEASURED_RDMA_ACTION.value)
        if unmeasured:
            result.fail(f"pool {pool!r} declares RDMA, not measured on {len(unmeasured)} of {count} nodes: "
                        f"{'; '.join(unmeasured.values())}; recommended action: "
                        f"{UNMEASURED_RDMA_ACTION.label}")
        if measured:
            result.add_metric("rdma_gbps.min", min(measured))
            result.add_metric("rdma_gbps.median", statistics.median(measured))
            for row in result.details["nodes"]:
                row["rdma_gbps_best"] = max((p["rdma_gbps"] for p in result.details["pairs"]
                                             if row["host"] in p["nodes"] and "rdma_gbps" in p), default=None)

    @classmethod
    def _measure(cls, ctx: CheckContext, executor, pair: tuple[int, int], names: list[str],
                 config: NetworkCheckConfig, workdir) -> dict:
        # the client retries while the pair has time left for its own test and the results
        role = Role("iperf", pair_command(config.seconds, config.pair_timeout_s - config.seconds - 5), nodes=2,
                    ports=(IPERF_PORT,))
        report = json.loads(cls._run_pair(ctx, executor, pair, names, config, workdir, role, "iperf.json"))
        end = report["end"]
        rtts = [s["sender"]["mean_rtt"] for s in end.get("streams", []) if "mean_rtt" in s.get("sender", {})]
        return {"nodes": [names[pair[0]], names[pair[1]]], "tcp_gbps": end["sum_received"]["bits_per_second"] / 1e9,
                "rtt_us": float(max(rtts)) if rtts else 0.0}

    @staticmethod
    def _run_pair(ctx: CheckContext, executor, pair: tuple[int, int], names: list[str], config: NetworkCheckConfig,
                  workdir, role: Role, output: str) -> bytes:
        """Run a two-node role (node 0 serves, node 1 measures) on (client, server) = `pair`; node 1's `output`."""
        client, server = pair
        ctx.log(f"{role.name} {names[client]} -> {names[server]}")
        workload = Workload(f"{role.name}{client}-{server}", (role,), volumes=(VolumePurpose.RESULTS,),
                            timeout_s=config.pair_timeout_s)
        # node 0 (the server) on the pair's second host, node 1 (the client) on its first
        pair_executor = executor_for_pair(executor, (server, client))
        with pair_executor.start(workload, workdir / f"{role.name}-pair{client}-{server}") as execution:
            outcome = execution.wait(min(config.pair_timeout_s, max(1.0, ctx.remaining_s())))
            if not outcome.succeeded:
                raise ExecutorError(f"{role.name} {names[client]} -> {names[server]}: {outcome.failure_summary()}")
            return execution.read_result(role.name, 1, output)
