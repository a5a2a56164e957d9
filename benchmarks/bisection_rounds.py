"""Bisection rounds: the `slow_node` check finding one rate-limited host among 4 and among 8 hosts.

    python -m benchmarks.bisection_rounds [--hosts 4 8] [--rate 8mbit] [--base-rate 80mbit] [--positions 0 1 -1]

Needs root, iproute2 and openssh-server (benchmarks/netns_hosts.py). For every host count N and every position of
the slowed host: N network-namespace hosts with their own sshd, one of them slowed both ways by a token bucket on
its veth (`NamespaceHosts.limit_rate`) and every other one limited to a 10x higher base rate, then `dcforge accept` runs the real `slow_node` check on them (pairwise
torchrun all-reduces over SSH, dcforge/checks/slow_node.py). Printed per run: the rounds used against the goal
⌈log2 N⌉ + 1, whether the slowed host was the one named, the pairs measured, the wall time and the load average.
The base rate matters: every namespace host shares this machine's CPUs, so with unlimited links a fast pair is
CPU-bound and measures faster in a round of fewer parallel pairs; a later, emptier round then raises the best
pair (the search's reference) until earlier fast pairs count as slow. A link-bound pool, as on a real cluster
where each node has its own CPUs, does not drift with parallelism. The load average is printed with every run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.netns_hosts import accept_on_hosts, missing_prerequisites, namespace_hosts, section_for


def one_run(hosts: int, slowed: int, rate: str, base_rate: str | None, work: Path) -> dict:
    """One search on fresh hosts; the figures of the slow_node check's report entry."""
    started = time.monotonic()
    with namespace_hosts(hosts, work / "hosts") as env:
        for index in range(hosts):
            if index == slowed:
                env.limit_rate(index, rate)
            elif base_rate:
                env.limit_rate(index, base_rate)
        proc, report = accept_on_hosts(work, section_for(env), ["slow_node"], {"slow_node": {"roundTimeoutS": 120}})
    check = next(c for c in (report or {}).get("checks", []) if c["name"] == "slow_node") if report else None
    if check is None or "rounds" not in check.get("metrics", {}):
        tail = (proc.stdout + proc.stderr)[-1500:]
        raise SystemExit(f"no slow_node result for N={hosts}, slowed host {slowed}:\n{tail}")
    return {"hosts": hosts, "slowed": f"ns-host-{slowed}", "culprit": check["details"]["culprit"],
            "rounds": int(check["metrics"]["rounds"]["value"]), "goal": math.ceil(math.log2(hosts)) + 1,
            "pairs": sum(len(r["pairs"]) for r in check["details"]["rounds"]),
            "trace": " | ".join(", ".join(f"{'+'.join(h.removeprefix('ns-host-') for h in p['nodes'])}"
                                          f" {p['busbw_gbps'] * 1000:.1f}{'*' if p['slow'] else ''}"
                                          for p in r["pairs"]) for r in check["details"]["rounds"]),
            "wall_s": time.monotonic() - started, "load": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--positions", type=int, nargs="+", default=[0, 1, -1],
                        help="indexes of the slowed host (negative: from the end)")
    parser.add_argument("--rate", default="8mbit", help="token-bucket rate of the slowed host's link (tc syntax)")
    parser.add_argument("--base-rate", default="80mbit",
                        help="rate of every other host's link, so that links and not this machine's shared CPUs "
                             "bound every pair, as on a real cluster ('' for unlimited links)")
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print(f"bisection_rounds: skipped: {missing}", file=sys.stderr)
        return 0
    print(f"slowed host {args.rate}, other hosts {args.base_rate or 'unlimited'}; load average at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    runs = []
    for hosts in args.hosts:
        for position in args.positions:
            slowed = position % hosts
            with tempfile.TemporaryDirectory(prefix="dcf-bisect-") as work:
                run = one_run(hosts, slowed, args.rate, args.base_rate or None, Path(work))
            runs.append(run)
            print(f"N={run['hosts']} slowed {run['slowed']}: named {run['culprit']}, rounds {run['rounds']} "
                  f"(goal <= {run['goal']}), {run['pairs']} pairs, {run['wall_s']:.0f} s, load "
                  f"{' '.join(f'{x:.2f}' for x in run['load'])}\n    rounds (pair busbw MB/s, * slow): {run['trace']}",
                  flush=True)
    wrong = [r for r in runs if r["culprit"] != r["slowed"] or r["rounds"] > r["goal"]]
    print(f"{len(runs) - len(wrong)}/{len(runs)} runs named the slowed host within the goal", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
