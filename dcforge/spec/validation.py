"""Cross-field rules over a whole environment: what single-field validation cannot see.

Each rule returns (key path, message) pairs; key paths are written as in the file (`dcforge:gpuPools[1].name`).

The acceptance checks an environment may name, and their settings models, belong to the checks registry above the
harness; the spec only declares what it needs from it (`CheckCatalog`) and is handed one, so validating a spec never
imports the checks (which import the harness, which imports the spec).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from pydantic import BaseModel, ValidationError

from dcforge.errors import pydantic_message
from dcforge.spec.compat import version_problems
from dcforge.spec.gpus import GPU_MODELS
from dcforge.spec.models import Environment
from dcforge.spec.slo import CI_BOUNDS, SloSyntaxError, parse_slo

Problem = tuple[str, str]


class CheckCatalog(Protocol):
    """The acceptance checks an environment may name (dcforge.checks.CATALOG is the bundled one)."""

    def names(self) -> Sequence[str]:
        """Every known check name, in the default run order."""
        ...

    def settings_model(self, name: str) -> type[BaseModel]:
        """The model that validates `dcforge:acceptance.settings.<name>`. Its optional `moved_keys` class attribute
        maps keys that are no longer settings to the key that replaced them (`{check}`: the check's name)."""
        ...

    def metric_aliases(self, name: str) -> Mapping[str, tuple[str, str]]:
        """Other names of the check's metrics (AIPerf's, former ones) -> (canonical key, whose name it is): an SLO
        naming one is refused with the canonical key."""
        ...


def moved_key_message(new_key: str) -> str:
    """How a key that moved elsewhere is refused: naming where it went, not just "unknown key"."""
    return f"no longer a setting here; set {new_key} instead"


def _duplicates(names: list[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


def duplicate_names(env: Environment) -> Iterator[Problem]:
    for key, names in (
        ("dcforge:gpuPools", [p.name for p in env.gpu_pools]),
        ("dcforge:network.namespaces", [n.name for n in env.network.namespaces]),
        ("dcforge:storage.classes", [c.name for c in env.storage.classes]),
        ("dcforge:security.teams", [t.name for t in env.security.teams]),
        ("dcforge:security.teams[].namespace", [t.namespace for t in env.security.teams]),
        ("dcforge:gpuPools[].nodes", [node for p in env.gpu_pools for node in p.nodes]),
    ):
        for name in _duplicates(names):
            yield key, f"duplicate name {name!r}"
    platform = {n.name for n in env.network.namespaces}
    for index, team in enumerate(env.security.teams):
        if team.namespace in platform:
            yield (f"dcforge:security.teams[{index}].namespace",
                   f"namespace {team.namespace!r} is also declared in network.namespaces; team namespaces are "
                   "created from the team and must not be declared twice")


def overlapping_cidrs(env: Environment) -> Iterator[Problem]:
    ranges = {
        "podCidr": env.network.pod_cidr,
        "serviceCidr": env.network.service_cidr,
        "nodeCidr": env.network.node_cidr,
        "rdma.cidr": env.network.rdma.cidr,
    }
    networks = {k: ipaddress.ip_network(v) for k, v in ranges.items() if v}
    keys = list(networks)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            if networks[first].overlaps(networks[second]):
                yield (f"dcforge:network.{second}",
                       f"{networks[second]} overlaps {first} {networks[first]}")


def team_quotas(env: Environment) -> Iterator[Problem]:
    pools = {p.name: p for p in env.gpu_pools}
    totals: Counter[str] = Counter()
    for index, team in enumerate(env.security.teams):
        for pool_name, gpus in team.gpu_quota.items():
            key = f"dcforge:security.teams[{index}].gpuQuota.{pool_name}"
            if pool_name not in pools:
                yield key, f"unknown pool {pool_name!r}; pools: {', '.join(pools) or 'none'}"
                continue
            capacity = pools[pool_name].schedulable_gpus
            if gpus > capacity:
                yield key, f"quota of {gpus} GPUs exceeds pool {pool_name!r} capacity of {capacity}"
            totals[pool_name] += gpus
    for pool_name, total in totals.items():
        capacity = pools[pool_name].schedulable_gpus
        if total > capacity:
            yield ("dcforge:security.teams",
                   f"team GPU quotas on pool {pool_name!r} add up to {total}, above its capacity of {capacity}")


def storage_rules(env: Environment) -> Iterator[Problem]:
    ceph = env.storage.ceph
    if env.storage.backend == "rook-ceph" and ceph and ceph.storage_nodes:
        for index, cls in enumerate(env.storage.classes):
            if cls.replication > len(ceph.storage_nodes) and ceph.failure_domain == "host":
                yield (f"dcforge:storage.classes[{index}].replication",
                       f"replication {cls.replication} needs {cls.replication} storage hosts, "
                       f"only {len(ceph.storage_nodes)} in ceph.storageNodes")


def rdma_rules(env: Environment) -> Iterator[Problem]:
    for index, pool in enumerate(env.gpu_pools):
        if pool.rdma and not env.network.rdma.enabled:
            yield f"dcforge:gpuPools[{index}].rdma", "pool asks for RDMA but network.rdma.enabled is false"


def versions_rules(env: Environment) -> Iterator[Problem]:
    models = sorted({p.gpu_model for p in env.gpu_pools})
    for key, message in version_problems(env.versions, [GPU_MODELS[m] for m in models],
                                         prod=env.environment.kind == "prod"):
        yield f"dcforge:versions.{key}", message
    if env.versions.fabric_manager and not any(GPU_MODELS[m].nvswitch for m in models):
        yield "dcforge:versions.fabricManager", "set, but no pool has NVSwitch GPUs that need a fabric manager"


def acceptance_rules(env: Environment) -> Iterator[Problem]:
    """What can be judged without knowing the checks: duplicates, SLO keys and their grammar, the pool."""
    acceptance = env.acceptance
    for name in _duplicates(acceptance.checks):
        yield "dcforge:acceptance.checks", f"check {name!r} listed twice"
    for metric, expressions in acceptance.slos.items():
        key = f"dcforge:acceptance.slos.{metric}"
        if "." not in metric:
            yield key, "SLO key must be '<check>.<metric>', e.g. 'train.tokens_per_s'"
        for expression in [expressions] if isinstance(expressions, str) else expressions:
            try:
                parse_slo(metric, expression)
            except SloSyntaxError as error:
                yield key, str(error)
    if acceptance.pool is not None and acceptance.pool not in {p.name for p in env.gpu_pools}:
        yield "dcforge:acceptance.pool", f"unknown pool {acceptance.pool!r}"
    if acceptance.slurm is not None:
        yield from slurm_rules(env)
    if acceptance.profile is not None:
        yield from profile_rules(env)


def slurm_rules(env: Environment) -> Iterator[Problem]:
    """`acceptance.slurm.partitions` names pools that exist; every pool has a partition on target slurm."""
    slurm = env.acceptance.slurm
    pools = [p.name for p in env.gpu_pools]
    for pool in slurm.partitions:
        if pool not in pools:
            yield (f"dcforge:acceptance.slurm.partitions.{pool}",
                   f"unknown pool {pool!r}; pools: {', '.join(pools) or 'none'}")
    if slurm.partition is None:
        for pool in pools:
            if pool not in slurm.partitions:
                yield "dcforge:acceptance.slurm.partitions", f"pool {pool!r} has no partition (nor is `partition` set)"


def profile_rules(env: Environment) -> Iterator[Problem]:
    """The profile must exist and every shipped one be well-formed (a profile file is read and judged by the loader,
    which knows the environment file's folder)."""
    from dcforge.errors import DcforgeError
    from dcforge.spec.profiles import builtin_profiles

    key = "dcforge:acceptance.profile"
    choice = env.acceptance.profile
    try:
        profiles = builtin_profiles()
        if choice.endswith((".yaml", ".yml")):
            return
        if choice != "auto" and choice not in profiles:
            yield key, f"unknown profile {choice!r}; known: auto, {', '.join(profiles)} or a .yaml path"
    except DcforgeError as error:
        for line in str(error).splitlines():
            yield key, f"malformed profile: {line}"


def check_catalog_rules(env: Environment, checks: CheckCatalog) -> Iterator[Problem]:
    """Every check the environment names exists in `checks`, with settings its model accepts."""
    acceptance = env.acceptance
    known = list(checks.names())
    for index, name in enumerate(acceptance.checks):
        if name not in known:
            yield f"dcforge:acceptance.checks[{index}]", f"unknown check {name!r}; known: {', '.join(known)}"
    for name, settings in acceptance.settings.items():
        key = f"dcforge:acceptance.settings.{name}"
        if name not in known:
            yield key, f"settings for unknown check {name!r}"
            continue
        model = checks.settings_model(name)
        moved = {old: new for old, new in getattr(model, "moved_keys", {}).items() if old in settings}
        for old, new in moved.items():
            yield f"{key}.{old}", moved_key_message(new.format(check=name))
        try:
            validated = model.model_validate({k: v for k, v in settings.items() if k not in moved})
        except ValidationError as error:  # one line per field
            for detail in error.errors():
                loc = ".".join(str(part) for part in detail["loc"])
                yield f"{key}.{loc}" if loc else key, pydantic_message(detail)
            continue
        # Settings that must agree with the rest of the environment (e.g. storage paths of declared classes).
        for loc, message in getattr(validated, "environment_problems", lambda spec: ())(env):
            yield f"{key}.{loc}", message
    for metric in acceptance.slos:
        check = metric.split(".", 1)[0]
        if "." not in metric:
            continue  # acceptance_rules names the malformed key
        key = f"dcforge:acceptance.slos.{metric}"
        if check not in known:
            yield key, f"unknown check {check!r}; known: {', '.join(known)}"
            continue
        if check not in acceptance.checks:
            yield key, f"check {check!r} is not in acceptance.checks, so this SLO could never be judged"
        alias = checks.metric_aliases(check).get(metric.split(".", 1)[1])
        if alias is not None:
            canonical, source = alias
            yield key, f"{metric.split('.', 1)[1]!r} is the {source} name of this metric; write {check}.{canonical}"
        if metric.rpartition(".")[2] in CI_BOUNDS and _repeats(acceptance.settings.get(check)) < 2:
            yield key, (f"a confidence bound needs dcforge:acceptance.settings.{check}.repeats >= 2 "
                        "(one measurement has no interval)")
    for name in acceptance.timeouts_s:
        if name not in known:
            yield f"dcforge:acceptance.timeoutsS.{name}", f"timeout for unknown check {name!r}"
    if acceptance.profile and not acceptance.profile.endswith((".yaml", ".yml")):  # files: judged by the loader
        from dcforge.errors import DcforgeError
        from dcforge.spec.profiles import builtin_profiles

        try:
            profiles = builtin_profiles().values()
        except DcforgeError:
            return  # profile_rules reports the malformed file
        for profile in profiles:
            for threshold_key in profile.unknown_checks(known):
                yield ("dcforge:acceptance.profile", f"malformed profile {profile.name} (dcforge/spec/data/profiles): "
                       f"thresholds.{threshold_key}: unknown check {threshold_key.split('.', 1)[0]!r}")


def _repeats(settings) -> int:
    """A check's `repeats` setting as written (1 when unset or not a number: settings validation names that)."""
    value = (settings or {}).get("repeats", 1)
    return value if isinstance(value, int) else 1


RULES: list[Callable[[Environment], Iterator[Problem]]] = [
    duplicate_names,
    overlapping_cidrs,
    team_quotas,
    storage_rules,
    rdma_rules,
    versions_rules,
    acceptance_rules,
]


def cross_field_problems(env: Environment, checks: CheckCatalog | None = None) -> list[Problem]:
    """Every rule's problems, and with `checks` the acceptance checks' names and settings judged against it.
    Without it they cannot be judged: the names are taken as written."""
    problems = [problem for rule in RULES for problem in rule(env)]
    if checks is not None:
        problems += check_catalog_rules(env, checks)
    return problems
