"""`system`: hardware and software inventory of the machine acceptance runs on.

Fails when the environment declares GPUs for this node and fewer are visible, when the visible GPU model differs
from the declared one, or when the loaded driver is not the pinned one (the judge: dcforge/steps/system.py).
"""

from __future__ import annotations

from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckResult
from dcforge.placement.scope import single_node
from dcforge.placement.pool import on_a_pool_machine
from dcforge.report.provenance import git_commit
from dcforge.steps.system import SYSTEM_METRICS, SystemConfig, judge_facts, node_facts, system_step


class SystemCheck:
    name = "system"
    description = "Hardware and software inventory; GPUs the environment declares must be visible."
    Config = SystemConfig
    metrics = SYSTEM_METRICS
    requires_declared_gpus = False  # it is the check that reports missing GPUs
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/placement/pool.py)

    def run(self, ctx: CheckContext, config: SystemConfig) -> CheckResult:
        return single_node(ctx, self, here=lambda: self.here(ctx, config),
                           pool=lambda: on_a_pool_machine(ctx, self.name, lambda _: system_step(ctx.env.spec, config)))

    def here(self, ctx: CheckContext, config: SystemConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        facts = node_facts()
        ctx.log(f"{facts.cpu_count} CPUs, {facts.memory_gi:.1f} GiB, {len(facts.gpus)} GPUs")
        judge_facts(result, facts, ctx.env.spec, config)
        result.details.update({"repo_commit": git_commit(), "env_file": str(ctx.env.path),
                               "env_sha256": ctx.env.sha256})
        return result


