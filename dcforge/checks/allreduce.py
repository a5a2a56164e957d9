"""`allreduce`: collective bandwidth across the ranks of this node (NCCL on GPUs, gloo on CPU).

The settings, metrics (nccl-tests' busbw and algbw) and judge are the all-reduce step's (dcforge/steps/allreduce.py).
The transport NCCL used is read from the ranks' log (dcforge/nccl_transport.py); a fallback to Socket where the pool
declares RDMA fails the check.
"""

from __future__ import annotations

from dcforge.harness.check import CheckContext
from dcforge.harness.power import record_energy, sample_power
from dcforge.harness.result import CheckResult
from dcforge.nccl_transport import record_transport
from dcforge.placement.scope import single_node
from dcforge.placement.pool import on_a_pool_machine, transport_from_log
from dcforge.steps.allreduce import ALLREDUCE_METRICS, AllreduceCheckConfig, allreduce_step, record_sweep, sweep_args
from dcforge.steps.rdma import declared_rdma_pool
from dcforge.steps.torchrun import run_torchrun
from workloads.records import ALLREDUCE_RESULT_FILE, AllreduceResult, read_result_file


class AllreduceCheck:
    name = "allreduce"
    description = "All-reduce sweep over message sizes: busbw per nccl-tests, correctness per size."
    Config = AllreduceCheckConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: runs on a machine of the acceptance pool (dcforge/placement/pool.py)
    metrics = ALLREDUCE_METRICS

    def run(self, ctx: CheckContext, config: AllreduceCheckConfig) -> CheckResult:
        return single_node(ctx, self, here=lambda: self.here(ctx, config),
                           pool=lambda: on_a_pool_machine(ctx, self.name, allreduce_step, config,
                                                          after=transport_from_log(ctx.env.spec)))

    def here(self, ctx: CheckContext, config: AllreduceCheckConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        nproc = config.nproc()
        workdir = ctx.artefact_dir(self.name)
        output = workdir / ALLREDUCE_RESULT_FILE
        args = sweep_args(config, str(output))
        with sample_power() as power:
            run_torchrun(ctx, "allreduce.py", args, nproc=nproc, log_path=workdir / "torchrun.log")
        sweep = read_result_file(output, AllreduceResult)
        record_sweep(result, sweep, nproc)
        record_transport(result, sweep.environment["backend"], [("local", workdir / "torchrun.log")],
                         declared_rdma_pool(ctx.env.spec))
        record_energy(result, power)
        result.artefacts["sweep"] = ctx.relative(output)
        result.artefacts["torchrun_log"] = ctx.relative(workdir / "torchrun.log")
        return result


