"""`python -m benchmarks` (`make bench`): run every ratio benchmark, one after the other, each in its own process.

Benchmarks are not tests: they print figures to record in benchmarks/README.md, and never gate CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

# (module, arguments, needs root, time limit in seconds)
BENCHMARKS = [
    ("benchmarks.train_overhead", (), False, 1200),
    ("benchmarks.inference_serving", (), False, 900),
    # The batching speedup on a model whose batch-1 decode is bound by streaming its weights, as real models are.
    ("benchmarks.inference_serving", ("--preset", "125m"), False, 1500),
    ("benchmarks.inference_loadgen", (), False, 900),
    ("benchmarks.inference_replicas", (), False, 900),
    ("benchmarks.capacity_search", (), False, 900),
    ("benchmarks.stacks_scale", (), False, 900),
    ("benchmarks.ansible_converge", (), True, 1200),
    ("benchmarks.bisection_rounds", (), True, 1800),
    ("benchmarks.multinode_busbw", (), True, 900),
    ("benchmarks.slurm_overhead", (), True, 600),
]


def main(selected: list[str]) -> int:
    failed = []
    for module, args, needs_root, limit in BENCHMARKS:
        if selected and module.rsplit(".", 1)[1] not in selected:
            continue
        if needs_root and os.geteuid() != 0:
            print(f"== {module}: skipped (needs root: a chroot, or network namespaces)", flush=True)
            continue
        name = " ".join((module, *args))
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            code = subprocess.run([sys.executable, "-m", module, *args], timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {limit} s"
        print(f"== {name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
