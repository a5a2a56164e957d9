"""Multi-node all-reduce scaling: busbw on 3 hosts ÷ busbw on 2 hosts over the same links.

    python -m benchmarks.multinode_busbw [--rounds 3] [--rate 100mbit] [--size 1M]

Needs root, iproute2 and openssh-server (benchmarks/netns_hosts.py). Three network-namespace hosts, every one
rate-limited both ways by the same token bucket on its veth, so the links -- not this machine's CPUs or the
bridge -- are the bottleneck. Each round runs the real `allreduce_multinode` check through `dcforge accept` on
hosts 0-1 and on hosts 0-2 (one rank per host, one message size), in alternating order; the figure is the median
over rounds of the per-round ratio busbw(3) / busbw(2). busbw = algbw · 2(n−1)/n (docs/metrics.md#allreduce)
counts what crosses each link, so on equal links a ring all-reduce gives a ratio near 1: below it, adding a node
costs more than the links explain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.netns_hosts import accept_on_hosts, missing_prerequisites, namespace_hosts, section_for


def busbw(env, nodes: int, size: str) -> float:
    """busbw (GB/s) of the allreduce_multinode check on the first `nodes` hosts."""
    with tempfile.TemporaryDirectory(prefix="dcf-busbw-") as work:
        settings = {"allreduce_multinode": {"nodes": nodes, "minBytes": size, "maxBytes": size}}
        proc, report = accept_on_hosts(Path(work), section_for(env), ["allreduce_multinode"], settings)
    check = next((c for c in (report or {}).get("checks", []) if c["name"] == "allreduce_multinode"), None)
    if check is None or check["status"] != "pass":
        reason = check["reason"] if check else (proc.stdout + proc.stderr)[-1500:]
        raise SystemExit(f"allreduce_multinode on {nodes} hosts did not pass: {reason}")
    return check["metrics"]["busbw_gbps"]["value"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="100mbit", help="token-bucket rate of every host's link (tc syntax)")
    parser.add_argument("--size", default="1M", help="all-reduce message size")
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print(f"multinode_busbw: skipped: {missing}", file=sys.stderr)
        return 0
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="dcf-busbw-hosts-") as hosts_dir:
        with namespace_hosts(3, Path(hosts_dir)) as env:
            for index in range(3):
                env.limit_rate(index, args.rate)
            for round_ in range(args.rounds):
                order = (2, 3) if round_ % 2 == 0 else (3, 2)
                figures = {nodes: busbw(env, nodes, args.size) for nodes in order}
                ratios.append(figures[3] / figures[2])
                print(f"round {round_ + 1} (order {order[0]}, {order[1]}): busbw 2 hosts {figures[2] * 1000:.2f} "
                      f"MB/s, 3 hosts {figures[3] * 1000:.2f} MB/s, ratio {ratios[-1]:.3f}; load "
                      f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"busbw 3 hosts / 2 hosts, median of {len(ratios)} paired rounds: {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}] at {args.rate} per link", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
