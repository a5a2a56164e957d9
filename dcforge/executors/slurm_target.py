"""Target `slurm` from the environment file: the executor of a check (`executor_for`), the partition of a pool,
and the cancelling of a run's or an environment's jobs (Ctrl-C leftovers, `dcforge clean`). docs/slurm.md.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dcforge.errors import ConfigError
from dcforge.executors.base import ExecutorError, Resources
from dcforge.executors.slurm import SlurmExecutor, SlurmOptions
from dcforge.executors.slurm_commands import COMMENT_PREFIX, SlurmJob, cancel_jobs

KEY = "dcforge:acceptance.slurm"


def slurm_options(env, pool: str | None = None) -> SlurmOptions:
    """The options of target slurm for `pool` (default the acceptance pool); relative paths are relative to the
    environment file."""
    section = env.spec.acceptance.slurm
    if section is None:
        raise ConfigError(env.path, KEY, "missing: target slurm needs a partition and a sharedDir")
    base = Path(env.path).parent
    pool_name = pool or (env.spec.acceptance_pool.name if env.spec.acceptance_pool is not None else None)
    partition = section.partitions.get(pool_name, section.partition) if pool_name else section.partition
    if partition is None:
        raise ConfigError(env.path, f"{KEY}.partitions", f"pool {pool_name!r} has no partition")
    conf = section.slurm_conf
    options = SlurmOptions(partition=partition, shared_dir=Path(section.shared_dir), account=section.account,
                           qos=section.qos, time_limit_min=section.time_limit_min,
                           pending_limit_s=section.pending_limit_s,
                           slurm_conf=str(base / conf) if conf and not Path(conf).is_absolute() else conf)
    changes = {name: value for name, value in (("python", section.python), ("workdir", section.workdir)) if value}
    return replace(options, **changes)


def slurm_executor_for(env, run_id: str, check: str, nodes: int | None, min_nodes: int = 1
                       ) -> tuple[SlurmExecutor, int, str | None]:
    """The executor of `check` pinned to the partition's first `nodes` usable nodes (default all, at least
    `min_nodes`), the node count and the collectives' interface; ExecutorError (one line) when there are fewer."""
    pool = env.spec.acceptance_pool
    executor = SlurmExecutor(slurm_options(env), env.spec.name, run_id,
                             node_resources=Resources(gpus=pool.gpus_per_node) if pool is not None else None)
    usable = executor.pool_nodes()
    wanted = nodes or len(usable)
    if len(usable) < max(wanted, min_nodes):
        asked = f"{KEY}: {check} asks for {max(wanted, min_nodes)} node(s)"
        raise ExecutorError(f"{asked}, partition {executor.options.partition} has {len(usable)} usable"
                            + (f" ({', '.join(usable)})" if usable else ""))
    return executor.pinned(usable[:wanted]), wanted, env.spec.acceptance.slurm.socket_ifname


def cancel_environment_jobs(env) -> list[SlurmJob]:
    """scancel every job of every run of this environment (`dcforge clean --env X`); the jobs cancelled."""
    return cancel_jobs(f"{COMMENT_PREFIX}{env.spec.name} ", slurm_options(env).client_env())
