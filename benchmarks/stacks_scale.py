"""Synth + mocked `pulumi up` of a prod-scale environment, and how the time grows when the environment doubles.

Scale N: 1,000 named bare-metal GPU nodes (NodePatch each) in 32 pools, 100 team namespaces (2 pool quotas each),
Rook-Ceph, RDMA; 2N doubles nodes, pools and teams. Phases, each timed:
- validate: the spec from its stack config, as `stacks/__main__.py` does;
- synth: `dcforge synth` without schema validation (build every manifest, write the YAML files);
- up (mocked): `stacks/__main__.py` under `pulumi.runtime.set_mocks` (spec read + validated again, every resource
  registered with the mock engine);
- verify: schema validation (kubernetes-validate) + compliance rules of the synth output (reported apart: it is
  `dcforge validate`, not part of `pulumi up`).
Goal: synth + mocked up of N < 15 s, growth ratio t(2N)/t(N) <= 2.2.

    python -m benchmarks.stacks_scale [--nodes 1000 --pools 32 --teams 100] [--repeat 1] [--skip-verify]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcforge.paths import STACKS_DIR  # noqa: E402

sys.path.insert(0, str(STACKS_DIR))

TIME_GOAL_S = 15.0
GROWTH_GOAL = 2.2
GPUS_PER_NODE = 8
GPUS_PER_TEAM_QUOTA = 8


@dataclass(frozen=True)
class Scale:
    nodes: int
    pools: int
    teams: int

    def doubled(self) -> "Scale":
        return Scale(self.nodes * 2, self.pools * 2, self.teams * 2)

    def __str__(self) -> str:
        return f"{self.nodes} nodes / {self.pools} pools / {self.teams} teams"


def scaled_config(scale: Scale) -> dict[str, Any]:
    """The prod environment's config with `scale` pools of named nodes and `scale.teams` team namespaces."""
    from dcforge.spec import load_environment

    config = copy.deepcopy(load_environment("prod").raw_config)
    per_pool, extra = divmod(scale.nodes, scale.pools)
    pools = []
    for index in range(scale.pools):
        name = f"pool-{index:03d}"
        inference = index % 8 == 7  # one pool in eight serves inference; the rest train over RDMA
        pools.append({
            "name": name,
            "gpuModel": "L40S" if inference else "H100-SXM",
            "gpusPerNode": GPUS_PER_NODE,
            "nodes": [f"gpu-{index:03d}-{node:03d}" for node in range(per_pool + (1 if index < extra else 0))],
            "cpusPerNode": 112,
            "memoryGiPerNode": 2048,
            "purpose": "inference" if inference else "training",
            "rdma": not inference,
            "labels": {"dcforge.io/rail-group": f"g{index % 4}"},
            "taints": ["nvidia.com/gpu=present:NoSchedule", f"dcforge.io/pool={name}:NoSchedule"],
        })
    config["gpuPools"] = pools
    config["security"]["teams"] = [{
        "name": f"team-{index:03d}",
        "namespace": f"team-{index:03d}",
        "groups": {"ml-engineer": [f"team-{index:03d}-engineers"], "ml-viewer": [f"team-{index:03d}-viewers"]},
        "gpuQuota": {pools[index % scale.pools]["name"]: GPUS_PER_TEAM_QUOTA,
                     pools[(index + 1) % scale.pools]["name"]: GPUS_PER_TEAM_QUOTA},
    } for index in range(scale.teams)]
    config["acceptance"]["pool"] = pools[0]["name"]
    return config


def _timed(function, *args) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call. CPU time is what to compare on a shared machine: wall time includes
    waiting for a core while other processes run."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure(scale: Scale, verify: bool) -> dict[str, Any]:
    from components.config import spec_from_config
    from tests.pulumi_mocks import run_stack_program, stack_config
    from dcforge.synth import synthesize, verify_objects

    config = scaled_config(scale)
    figures: dict[str, Any] = {}

    def phase(name: str, function, *args) -> Any:
        figures[f"{name}_s"], figures[f"{name}_cpu_s"], result = _timed(function, *args)
        return result

    spec = phase("validate", spec_from_config, config, "bench", "Pulumi.bench.yaml")
    with tempfile.TemporaryDirectory() as out:
        files = phase("synth", _synth, spec, Path(out))
        figures["manifests"] = sum(len(objects) for objects in files.values())
    figures["resources"] = len(phase("up", run_stack_program, "bench", stack_config(config)))
    if verify:
        objects = [obj for objects in synthesize(spec).values() for obj in objects]
        figures["violations"] = len(phase("verify", verify_objects, spec, objects).failures)
    figures["total_s"] = figures["synth_s"] + figures["up_s"]
    figures["total_cpu_s"] = figures["synth_cpu_s"] + figures["up_cpu_s"]
    return figures


def _synth(spec: Any, out: Path) -> dict[str, list[dict[str, Any]]]:
    from dcforge.synth import synthesize, write_files

    files = synthesize(spec)
    write_files(files, out)
    return files


def best_of(scale: Scale, repeat: int, verify: bool) -> dict[str, Any]:
    runs = [measure(scale, verify and index == 0) for index in range(repeat)]
    best = min(runs, key=lambda figures: figures["total_cpu_s"])
    return {**runs[0], **best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pools", type=int, default=32)
    parser.add_argument("--teams", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="runs per scale; the fastest counts")
    parser.add_argument("--skip-verify", action="store_true", help="skip schema + compliance of the synth output")
    args = parser.parse_args(argv)
    base = Scale(args.nodes, args.pools, args.teams)
    # First use imports pulumi, pulumi-kubernetes classes and the rules; timed apart so both scales run warm.
    warm_up_s, _, _ = _timed(measure, Scale(16, 2, 4), False)
    print(f"warm-up (imports, a 16-node environment): {warm_up_s:.2f} s")
    results = {}
    for scale in (base, base.doubled()):
        results[scale] = best_of(scale, args.repeat, not args.skip_verify)
        f = results[scale]
        verify = (f", verify {f['verify_s']:.2f} s ({f['violations']} violations)" if "verify_s" in f else "")
        print(f"{scale}: {f['manifests']} manifests, {f['resources']} Pulumi resources | wall (cpu) seconds: "
              f"validate {f['validate_s']:.2f}, synth {f['synth_s']:.2f} ({f['synth_cpu_s']:.2f}), "
              f"mocked up {f['up_s']:.2f} ({f['up_cpu_s']:.2f}), synth+up {f['total_s']:.2f} "
              f"({f['total_cpu_s']:.2f}){verify}")
    small, large = results[base], results[base.doubled()]
    print(f"mocked up: {1000 * small['up_cpu_s'] / small['resources']:.2f} ms CPU per resource "
          f"({1000 * small['up_s'] / small['resources']:.2f} ms wall)")
    for label, key in (("wall", "total_s"), ("cpu", "total_cpu_s")):
        growth = large[key] / small[key]
        print(f"{label}: synth+up at N {small[key]:.2f} s (goal < {TIME_GOAL_S:.0f} s: "
              f"{'OK' if small[key] < TIME_GOAL_S else 'MISSED'}), growth t(2N)/t(N) {growth:.2f} "
              f"(goal <= {GROWTH_GOAL}: {'OK' if growth <= GROWTH_GOAL else 'MISSED'})")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores"
          + (" -- machine busy: judge by CPU time" if load > (os.cpu_count() or 1) else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
