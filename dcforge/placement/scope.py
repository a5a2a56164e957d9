"""Where a single-node check runs, decided here rather than in the check: on target kubernetes a check with
`on_pool` runs on a machine (or every machine) of the acceptance pool, elsewhere on the machine running dcforge.

A check hands both ways of running to `single_node` and never asks for the target itself; a new target changes
this module (and executors/), not the checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dcforge.harness.check import CheckContext, runs_on_pool

Outcome = TypeVar("Outcome")


def single_node(ctx: CheckContext, check: object, *, here: Callable[[], Outcome],
                pool: Callable[[], Outcome]) -> Outcome:
    """`pool()` where the target places the check's workload on the acceptance pool (`runs_on_pool`: target
    kubernetes and the check's `on_pool`), `here()` on this machine otherwise."""
    return pool() if runs_on_pool(check, ctx.env.spec) else here()


def targets_a_cluster(spec) -> bool:
    """Whether the environment's checks run on a Kubernetes cluster (whose live objects can be read)."""
    return spec.acceptance.target == "kubernetes"
