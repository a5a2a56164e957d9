"""Pod start-up and cleanup of the kubernetes executor on a real cluster (issue 10's figures).

    python -m benchmarks.cluster_startup --kubeconfig F [--context C] [--env-file stacks/Pulumi.cluster.yaml]
        [--rounds 5] [--nodes 2]

Needs a cluster with the acceptance image present (README: running the e2e suite) and the environment's stack
applied (its acceptance namespace and ServiceAccount). Each round starts one workload through the executor exactly
as a check does -- an Indexed Job of `--nodes` pods that sleep 3 s in the acceptance image, with its Service and
NetworkPolicy -- then stops it. Figures, medians over rounds:

- start-up: `start` -> every pod Running (`KubernetesExecution.startup_s`: object creation, scheduling, the
  image, the container start); goal <= 15 s plus scheduling on an idle node;
- cleanup: `stop` -> every labelled object gone (`cleanup_s`); goal <= 30 s;
- API requests of the whole round (creates, one list+watch per watch, logs, deletes): a watch, not polling, so the
  count does not grow with the 3 s the pods run.

The figures measured on a single-node cluster are in benchmarks/README.md ("Acceptance on Kubernetes");
`tests/unit/test_cluster_startup.py` runs this module against the fake API.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from dcforge.executors.base import Resources, Role, Workload
from dcforge.paths import REPO_ROOT

SLEEP_S = 3.0


def startup_workload(nodes: int) -> Workload:
    """What a multi-node check starts, minus the work: one role of `nodes` pods with a named port (so the Service
    and the NetworkPolicy are created as for a rendezvous) that sleep and exit."""
    role = Role("sleep", ("{python}", "-c", f"import time; time.sleep({SLEEP_S})"), nodes=nodes,
                resources=Resources(cpus=0.1, memory_mib=128), ports=("rdzv",))
    return Workload("startup-bench", (role,), timeout_s=120.0)


def one_round(executor, nodes: int, work: Path) -> dict[str, float]:
    with executor.start(startup_workload(nodes), work) as execution:
        outcome = execution.wait(120.0)
    if not outcome.succeeded:
        raise SystemExit(f"cluster_startup: the pods did not run through: {outcome.failure_summary()}")
    if execution.leftovers:
        raise SystemExit(f"cluster_startup: left behind: {', '.join(execution.leftovers)}")
    return {"startup_s": execution.startup_s, "cleanup_s": execution.cleanup_s,
            "api_requests": float(execution.api_requests)}


def main(argv: list[str] | None = None, api_client=None) -> int:
    from dcforge.executors.kubernetes import KubernetesExecutor
    from dcforge.spec import load_environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("--env-file", type=Path, default=REPO_ROOT / "stacks" / "Pulumi.cluster.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    if api_client is None and not args.kubeconfig:
        print("cluster_startup: skipped: needs --kubeconfig of a cluster with the acceptance image", file=sys.stderr)
        return 0
    spec = load_environment(path=args.env_file).spec
    executor = KubernetesExecutor(spec, "startup-bench", api_client, kubeconfig=args.kubeconfig,
                                  context=args.context)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="dcf-startup-") as work:
        for number in range(args.rounds):
            rounds.append(one_round(executor, args.nodes, Path(work) / str(number)))
            figures = rounds[-1]
            print(f"round {number + 1}: pods Running after {figures['startup_s']:.2f} s, cleanup "
                  f"{figures['cleanup_s']:.2f} s, {figures['api_requests']:.0f} API requests", flush=True)
    for key, goal in (("startup_s", "<= 15 s + scheduling"), ("cleanup_s", "<= 30 s"), ("api_requests", "")):
        values = [r[key] for r in rounds]
        print(f"{key}: median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f}) "
              f"over {len(values)} rounds" + (f"; goal {goal}" if goal else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
