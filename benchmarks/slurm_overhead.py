"""dcforge's own overhead per job through Slurm, on the namespace test bed (benchmarks/netns_slurm.py), and the
fast node check's wall time.

Per job, a trivial workload (each node writes one result file), `--rounds` times on 1 node and on 3 nodes:
- submit to first rank running: from just before `SlurmExecutor.start` (srun is started) to the modification time
  of the first node's `started` file (written by the node's script as it starts the command): srun, slurmctld's
  scheduling, slurmd's launch and dcforge's node script, together;
- end to results back: from the last node's `exit` file (written as the command ends) to `wait` returning and every
  result read back (srun's end, dcforge's polling, reading the shared folder).
The same clock serves both ends: the namespaces share this machine's clock and filesystem.

`dcforge node-check --fast` runs `--rounds` times as a process (Python start and imports included), on a node
without GPUs.

`python -m benchmarks.slurm_overhead [--rounds 5]` (root: network namespaces).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.netns_slurm import PARTITION, slurm_cluster
from dcforge.executors.base import Role, Workload
from dcforge.executors.slurm import SlurmExecutor, SlurmOptions

REPO = Path(__file__).resolve().parents[1]


def one_job(executor: SlurmExecutor, nodes: int, run_dir: Path) -> tuple[float, float]:
    role = Role("w", ("sh", "-c", "echo done > {volume[results]}/r.txt"), nodes=nodes)
    submitted = time.time()
    with executor.start(Workload("bench", (role,)), run_dir) as execution:
        base = execution._base
        outcome = execution.wait(60, poll_s=0.02)
        started = min((base / f"w-{i}" / "started").stat().st_mtime for i in range(nodes))
        ended = max((base / f"w-{i}" / "exit").stat().st_mtime for i in range(nodes))
        for i in range(nodes):
            execution.read_result("w", i, "r.txt")
        back = time.time()
    if not outcome.succeeded:
        raise RuntimeError(outcome.failure_summary())
    return started - submitted, back - ended


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s [{min(values):.3f}-{max(values):.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dcf-slurm-bench-"))
    with slurm_cluster(work / "cluster") as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        (work / "shared").mkdir()
        executor = SlurmExecutor(SlurmOptions(PARTITION, work / "shared", slurm_conf=str(cluster.conf)),
                                 "bench", "bench")
        for nodes in (1, 3):
            figures = [one_job(executor, nodes, work / f"run-{nodes}-{i}") for i in range(args.rounds)]
            print(f"{nodes} node(s), {args.rounds} jobs: submit -> first rank running "
                  f"{summary([f[0] for f in figures])}; end -> results back {summary([f[1] for f in figures])}",
                  flush=True)
    walls = []
    for _ in range(args.rounds):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "dcforge.cli", "node-check", "--fast", "--interface", "lo"],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        walls.append(time.monotonic() - started)
        if done.returncode != 0:
            print(f"node-check failed: {done.stdout}{done.stderr}", file=sys.stderr)
            return 1
    print(f"node-check --fast, {args.rounds} runs: wall {summary(walls)} (goal <= 10 s); last: {done.stdout.strip()}")
    print(f"load average after: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
