"""A step: what one node runs (the command, as executor templates: `{python}`, `{volume[results]}`), the typed result
file it writes, and its judge: the single-node check's own formulas and verdicts over that file, so a node passes
a step exactly when the check would pass there. Each workload's step builder lives beside its settings and judge
(`steps/train.py`, `allreduce.py`, `checkpoint.py`, `system.py`, `gpu_bandwidth.py`); placement runs steps
(`dcforge/placement/`: one pool machine, every node).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dcforge.executors.base import NodeState, NodeStatus, VolumePurpose
from dcforge.harness.result import CheckResult
from dcforge.steps.torchrun import TORCHRUN_ENV, socket_env, torchrun_command

LOOPBACK_IFNAME = "lo"
RESULTS = "{volume[results]}"
NODE_ENV = {**TORCHRUN_ENV, **socket_env(LOOPBACK_IFNAME)}
"""A step's torchrun environment: the ranks of one node meet over loopback."""


NODE_VOLUMES = (VolumePurpose.SCRATCH, VolumePurpose.RESULTS)
"""A step's volumes: the node's scratch space and the results it writes."""
CLAIM_VOLUMES = (*NODE_VOLUMES, VolumePurpose.CHECKPOINTS)
"""And the shared checkpoints volume (target kubernetes: a claim of the checkpoints StorageClass)."""


@dataclass(frozen=True)
class Step:
    """One single-node workload: the command a node runs, the result file it writes, and how it is judged."""

    name: str
    command: tuple[str, ...]
    result_file: str
    judge: Callable[[bytes], CheckResult]
    """The step's single-node result, by the single-node check's own formulas and verdicts."""
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[VolumePurpose, ...] = NODE_VOLUMES
    claim_class: str | None = None
    """The StorageClass of the checkpoints volume's claim on Kubernetes (`Workload.checkpoint_class`)."""
    claim_size_gi: int | None = None


def node_torchrun(script: str, args: list[str], nproc: int, max_restarts: int = 0) -> tuple[str, ...]:
    """A single-node torchrun of a workload script, as executor templates (`{python}`, `workloads/` in the
    executor's working directory)."""
    return tuple(torchrun_command(script, args, nproc, max_restarts, python="{python}", workloads_dir="workloads"))


def platform_failure(nodes: list[NodeStatus]) -> bool:
    """Whether a node failed for a reason outside the workload: never ran (not placed, image not pulled, refused at
    admission: no exit code of its own) or killed for its memory limit (the kubernetes executor's reasons), so the
    check is an error rather than a measured failure."""
    return any(node.state is NodeState.FAILED and (node.exit_code is None or ": OOMKilled" in node.reason)
               for node in nodes)
