"""`slow_node`: find the node that drags collectives down, by pairwise all-reduce in rounds.

Each round runs 2-node all-reduces on disjoint pairs in parallel and records busbw per pair. A pair is slow when
its busbw is below (1 − slowFraction) × the best pair's busbw measured so far (the best pair, not the median:
with three or four hosts half the pairs may hold the slow node). A node in any fast pair is cleared; a node only
in slow pairs is a suspect. Rounds continue until every node is cleared or suspected alone:

1. disjoint pairs over all nodes;
2. every node not yet measured, then every suspect that is not alone, is paired with a cleared node;
3. when every pair so far shares one node and none was slow, one pair without it confirms the reference.

One slow node among N is named in at most ⌈log2 N⌉ + 1 rounds (two rounds for most N: the pairs, then each
suspect of the slow pair beside a cleared node). The rounds, the pairs, their busbw and the culprit are in the
report; the check fails when a node is named. Per-node figure: the best busbw of the pairs the node was in; a node
more than outlierFraction below the median of the per-node figures is an outlier.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import Field

from dcforge.executors.base import ExecutorError
from dcforge.placement.naming import Pair, name_kubernetes_nodes, pair_executor
from dcforge.placement.naming import node_names as names_of
from dcforge.placement.targets import executor_for
from dcforge.steps.stats import outliers
from dcforge.placement.torchrun import TorchrunJob, run_torchrun_job
from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, Status
from workloads.records import ALLREDUCE_RESULT_FILE, AllreduceResult, read_result



@dataclass
class Search:
    """The state of a slow-node search over nodes 0..n-1."""

    nodes: int
    slow_fraction: float
    rounds: list[list[tuple[Pair, float]]] = field(default_factory=list)

    def measured(self) -> list[tuple[Pair, float]]:
        return [entry for round_ in self.rounds for entry in round_]

    def reference(self) -> float:
        return max((busbw for _, busbw in self.measured()), default=0.0)

    def is_slow(self, busbw: float) -> bool:
        return busbw < (1 - self.slow_fraction) * self.reference()

    def cleared(self) -> set[int]:
        return {node for pair, busbw in self.measured() if not self.is_slow(busbw) for node in pair}

    def suspects(self) -> set[int]:
        return {node for pair, busbw in self.measured() if self.is_slow(busbw) for node in pair} - self.cleared()

    def untested(self) -> list[int]:
        seen = {node for pair, _ in self.measured() for node in pair}
        return [node for node in range(self.nodes) if node not in seen]

    def culprit(self) -> int | None:
        suspects = self.suspects()
        return next(iter(suspects)) if len(suspects) == 1 and not self.untested() else None

    def next_round(self) -> list[Pair]:
        """The pairs to measure next; empty when the search is over."""
        done = {frozenset(pair) for pair, _ in self.measured()}
        if not self.rounds:
            return [(i, i + 1) for i in range(0, self.nodes - 1, 2)]
        cleared, suspects = sorted(self.cleared()), sorted(self.suspects())
        candidates = self.untested() + (suspects if len(suspects) > 1 or self.untested() else [])
        busy: set[int] = set()
        pairs: list[Pair] = []
        for node in candidates:
            if node in busy:
                continue
            partners = [p for p in cleared if p not in busy] + \
                       [p for p in range(self.nodes) if p not in busy and p not in cleared]
            for partner in partners:
                if partner != node and frozenset((node, partner)) not in done:
                    pairs.append((min(node, partner), max(node, partner)))
                    busy.update((node, partner))
                    break
        if pairs or suspects:
            return pairs
        common = set.intersection(*(set(pair) for pair, _ in self.measured()))
        if common and self.nodes > len(common) + 1:  # every pair shared a node: measure one without it
            others = [node for node in range(self.nodes) if node not in common]
            return [(others[0], others[1])]
        return []


def search(nodes: int, measure: Callable[[list[Pair]], list[float]], slow_fraction: float,
           max_rounds: int) -> Search:
    """Run rounds until the search is over or max_rounds; `measure` gives busbw per pair, pairs in parallel."""
    state = Search(nodes, slow_fraction)
    while len(state.rounds) < max_rounds:
        pairs = state.next_round()
        if not pairs:
            break
        state.rounds.append(list(zip(pairs, measure(pairs))))
    return state


def node_figures(state: Search) -> dict[int, float]:
    """Per node: the best busbw of the pairs it was in."""
    best: dict[int, float] = {}
    for pair, busbw in state.measured():
        for node in pair:
            best[node] = max(best.get(node, 0.0), busbw)
    return best


class SlowNodeConfig(CheckConfig):
    nodes: int | None = Field(default=None, ge=2)
    """Nodes to search; default every host of acceptance.hosts, every Ready node of the acceptance pool on target
    kubernetes (pinned by name), or 2 on target local."""
    message_bytes: str = "256K"
    """All-reduce message size per pair (binary units)."""
    iterations: int = Field(default=20, ge=20)
    """Timed iterations per pair (after 5 untimed)."""
    slow_fraction: float = Field(default=0.5, gt=0, lt=1)
    """A pair is slow below (1 − slowFraction) × the best pair's busbw."""
    outlier_fraction: float = Field(default=0.5, gt=0, lt=1)
    """A node is an outlier below (1 − outlierFraction) × the median per-node busbw."""
    rendezvous_timeout_s: int = Field(default=60, ge=1)
    round_timeout_s: float = Field(default=120.0, gt=0)
    """Limit for each round (the whole check has the runner's acceptance.timeoutsS.slow_node)."""


class SlowNodeCheck:
    name = "slow_node"
    description = "Pairwise all-reduce in rounds: names the node that drags collectives down, per-node busbw."
    Config = SlowNodeConfig
    requires_declared_gpus = False  # it measures the network between the hosts
    metrics = (
        MetricSpec("rounds", "rounds", "lower", "rounds of parallel pairwise all-reduce until the search ended",
                   "search cost; one slow node among N takes at most ⌈log2 N⌉ + 1"),
        MetricSpec("slow_nodes", "nodes", "lower", "nodes named as the slow one (0 or 1)",
                   "a node that drags every collective it is in below (1 − slowFraction) × the best pair"),
        MetricSpec("outliers", "nodes", "lower", "nodes whose best pair busbw < (1 − outlierFraction) × median",
                   "nodes well below the pool, even when they meet an absolute SLO"),
        MetricSpec("pair_busbw_gbps", "GB/s", "higher", "busbw = algbw · 2(n−1)/n, n = 2 ranks, per pair",
                   "bus bandwidth between two nodes", stats=("min", "max")),
    )

    def run(self, ctx: CheckContext, config: SlowNodeConfig) -> CheckResult:
        from workloads.allreduce import parse_size

        parse_size(config.message_bytes)
        result = CheckResult(self.name, declared=self.metrics)
        # target kubernetes: too few Ready nodes in the pool is an ExecutorError, the check's error (the runner)
        executor, count, ifname = executor_for(ctx, self.name, config.nodes, pin=True)
        workdir = ctx.artefact_dir(self.name)
        node_names = names_of(executor, count)

        def one(pair: Pair, round_index: int) -> float:
            job = TorchrunJob("allreduce.py", ("--min-bytes", config.message_bytes, "--max-bytes", config.message_bytes,
                                               "--warmup", "5", "--iters", str(config.iterations),
                                               "--timeout-s", str(int(config.round_timeout_s)),
                                               "--output", f"{{volume[results]}}/{ALLREDUCE_RESULT_FILE}"),
                              nnodes=2, nproc_per_node=1, socket_ifname=ifname,
                              rendezvous_timeout_s=config.rendezvous_timeout_s,
                              timeout_s=min(config.round_timeout_s, max(1.0, ctx.remaining_s())),
                              result_files=(ALLREDUCE_RESULT_FILE,))
            run = run_torchrun_job(pair_executor(executor, pair), f"pair{pair[0]}-{pair[1]}", job,
                                   workdir / f"round{round_index}" / f"pair{pair[0]}-{pair[1]}")
            if not run.outcome.succeeded:
                raise ExecutorError(f"pair {node_names[pair[0]]}+{node_names[pair[1]]}: "
                                    f"{run.outcome.failure_summary()}")
            sweep = read_result(run.result(ALLREDUCE_RESULT_FILE)[1].decode().splitlines(), AllreduceResult,
                                source=f"{node_names[pair[0]]}+{node_names[pair[1]]}")
            return sweep.results[-1].busbw_gbps

        def measure(pairs: list[Pair]) -> list[float]:
            round_index = len(state_rounds) + 1
            state_rounds.append(pairs)
            ctx.log(f"round {round_index}: " + ", ".join(f"{node_names[a]}+{node_names[b]}" for a, b in pairs))
            with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
                return list(pool.map(lambda pair: one(pair, round_index), pairs))

        state_rounds: list[list[Pair]] = []
        try:
            state = search(count, measure, config.slow_fraction, max_rounds=count + 1)
        except ExecutorError as error:
            result.status, result.reason = Status.ERROR, str(error)
            return result
        self._record(result, state, node_names, config)
        name_kubernetes_nodes(executor, result)
        return result

    @staticmethod
    def _record(result: CheckResult, state: Search, node_names: list[str], config: SlowNodeConfig) -> None:
        """Rounds, per-node figures and the verdict of a finished search."""
        figures = node_figures(state)
        culprit = state.culprit()
        named_outliers = outliers(figures, config.outlier_fraction)
        busbws = [busbw for _, busbw in state.measured()]
        result.add_metric("rounds", len(state.rounds))
        result.add_metric("slow_nodes", 0 if culprit is None else 1)
        result.add_metric("outliers", len(named_outliers))
        result.add_metric("pair_busbw_gbps.min", min(busbws))
        result.add_metric("pair_busbw_gbps.max", max(busbws))
        result.details["rounds"] = [
            {"round": i + 1, "pairs": [{"nodes": [node_names[a], node_names[b]], "busbw_gbps": busbw,
                                        "slow": state.is_slow(busbw)} for (a, b), busbw in round_]}
            for i, round_ in enumerate(state.rounds)]
        result.details["nodes"] = [
            {"node": node, "host": node_names[node], "busbw_gbps": figures.get(node),
             "verdict": "slow" if node == culprit else "suspect" if node in state.suspects()
             else "cleared" if node in state.cleared() else "untested", "outlier": node in named_outliers}
            for node in range(len(node_names))]
        result.details["culprit"] = node_names[culprit] if culprit is not None else None
        result.details["reference_busbw_gbps"] = state.reference()
        if culprit is not None:
            result.fail(f"slow node: {node_names[culprit]} (every pair with it below "
                        f"{1 - config.slow_fraction:g} × the best pair's busbw)")
        elif state.suspects():
            result.fail("slow pairs, but the search could not isolate one node: suspects "
                        + ", ".join(node_names[n] for n in sorted(state.suspects())))
        if named_outliers:
            result.fail("outliers: " + ", ".join(node_names[n] for n in named_outliers))
