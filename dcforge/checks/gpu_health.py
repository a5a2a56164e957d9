"""`gpu_health`: is every GPU of this node fit to run jobs? NVML state, XIDs, DCGM diagnostics.

Readers in `dcforge.gpu` produce typed readings; `dcforge.gpu.verdict` judges them (the rules are listed there).
Skipped with its reason where no GPU is visible: a node without GPUs is never reported as healthy.

On target kubernetes the readers run on every Ready node of the acceptance pool at once, in a pod pinned to the
node and holding all its GPUs (`python -m dcforge.checks.gpu_health`, a GpuHealthResult record), each judged by the
same verdict, plus one rule of the pool: the pod must see as many GPUs as the pool declares per node. The report
has a row per node (failed nodes named; `accept --taint-failed` quarantines them). A restricted pod cannot read
the kernel log, so XIDs come from NVML events only there (a note says so); DCGM diagnostics need dcgmi in the
image.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from pydantic import Field

from dcforge.findings import Action, most_urgent
from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.node import gpu_shortfall, no_gpu_reason
from dcforge.harness.result import CheckResult, CheckSkipped
from dcforge.placement.scope import single_node

# DCGM diagnostic level per stage of a node's life (DCGM's guidance: short after deploy, medium before acceptance,
# long for burn-in).
DCGM_LEVEL_BY_STAGE = {"deploy": 1, "acceptance": 2, "burn-in": 3}


class GpuHealthConfig(CheckConfig):
    stage: Literal["deploy", "acceptance", "burn-in"] = "acceptance"
    """Picks the DCGM diagnostic level: deploy 1, acceptance 2, burn-in 3."""
    dcgm_level: int | None = Field(default=None, ge=1, le=4)
    """Overrides the level the stage picks."""
    require_dcgm: bool = False
    """Fail when dcgmi is not installed (otherwise the diagnostics are reported as not run)."""
    dcgm_timeout_s: float = Field(default=1800.0, gt=0)
    xid_listen_ms: int = Field(default=1000, ge=0)
    """How long to listen for NVML XID events; history since boot comes from the kernel log."""


class GpuHealthCheck:
    name = "gpu_health"
    description = ("Per-GPU ECC, row remaps, retired pages, XIDs, NVLink, PCIe, clocks, temperature, power (NVML) "
                   "and DCGM diagnostics; fatal XIDs and pending or failed row remaps fail the node.")
    Config = GpuHealthConfig
    requires_declared_gpus = False  # reads whatever GPUs are visible, and fails a shortfall itself (run)
    metrics = (
        MetricSpec("gpus_checked", "GPUs", None, "GPUs NVML reports", "how many GPUs were read"),
        MetricSpec("gpus_failing", "GPUs", "lower", "GPUs with at least one failing finding",
                   "GPUs not fit to run jobs: must be 0"),
        MetricSpec("fatal_xids", "events", "lower", "fatal XIDs in NVML events and the kernel log since boot",
                   "XIDs after which a GPU needs a reset or replacement"),
        MetricSpec("ecc_uncorrected_volatile", "errors", "lower",
                   "uncorrectable SRAM + DRAM ECC errors since the driver loaded, all GPUs",
                   "memory errors that lost data since the last driver load"),
        MetricSpec("row_remaps_pending", "GPUs", "lower", "GPUs with a row remap waiting for a reset",
                   "GPUs that need a reset before they can be trusted"),
        MetricSpec("row_remaps_failed", "GPUs", "lower", "GPUs where a row remap failed (no spare rows)",
                   "GPUs to replace"),
        MetricSpec("nvlinks_down", "links", "lower", "NVLinks a GPU has that are not active",
                   "broken GPU-to-GPU links"),
        MetricSpec("temperature_c", "°C", "lower", "hottest GPU temperature (NVML)", "thermal headroom",
                   stats=("max",)),
        MetricSpec("dcgm_failures", "tests", "lower", "DCGM diagnostic results with status Fail",
                   "hardware tests DCGM failed"),
        MetricSpec("warnings", "findings", "lower", "findings that warn but do not fail",
                   "things to look at: lifetime ECC, NVLink errors, idle PCIe gen, heat"),
    )

    on_pool = True  # target kubernetes: a pod on every node of the acceptance pool (this module's docstring)

    def run(self, ctx: CheckContext, config: GpuHealthConfig) -> CheckResult:
        return single_node(ctx, self, here=lambda: self.here(ctx, config), pool=lambda: self._on_pool(ctx, config))

    def here(self, ctx: CheckContext, config: GpuHealthConfig) -> CheckResult:
        # fewer GPUs than declared fails (the readers still run: the kernel log may say why, XID 79); "no GPU
        # visible" is a skip only where this machine is declared to have none (docs/skips.md)
        shortfall = gpu_shortfall(ctx.env.spec)
        if shortfall is None and (reason := no_gpu_reason()):
            raise CheckSkipped(reason)
        result = CheckResult(self.name, declared=self.metrics)
        level = dcgm_level(config)
        dcgm_output = ctx.artefact_dir(self.name) / f"dcgmi-diag-r{level}.json"
        health = read_node_health(config, dcgm_output, ctx.remaining_s(), ctx.log)
        if health.dcgm is not None:
            result.artefacts["dcgm_diag"] = ctx.relative(dcgm_output)
        judge_health(result, health, level, config)
        if shortfall is not None:
            fail_shortfall(result, shortfall)
        for note in health.notes:
            ctx.log(note)
        return result

    def _on_pool(self, ctx: CheckContext, config: GpuHealthConfig) -> CheckResult:
        """Every Ready node of the acceptance pool at once, a pinned pod each; a row per node."""
        from dcforge.placement.naming import name_kubernetes_nodes
        from dcforge.placement.nodes import node_executors, run_on_nodes
        from dcforge.placement.targets import executor_for, machine_resources
        from dcforge.report.nodes import node_problem

        executor, count, _ = executor_for(ctx, self.name, None, pin=True, min_nodes=1, retest_quarantined=True)
        gpus = machine_resources(executor).gpus
        if not gpus:
            raise CheckSkipped("the acceptance pool's machines have no GPUs: no GPU health to read")
        nodes = node_executors(executor, count)
        step = gpu_health_step(config, gpus, ctx.env.spec.acceptance_pool)
        workdir = ctx.artefact_dir(self.name)
        ctx.log(f"GPU health on {len(nodes)} nodes of the acceptance pool, a pod each")
        rows = run_on_nodes(nodes, {host: [step] for host, _ in nodes}, workdir, ctx)
        result = CheckResult(self.name, declared=self.metrics)
        result.details.update(nodes=rows, executor=executor.name, dcgm_level=dcgm_level(config))
        name_kubernetes_nodes(executor, result)
        for figure in ("gpus_checked", "gpus_failing", "fatal_xids"):
            result.add_metric(figure, sum(row.get(figure, 0) for row in rows), context=f"{len(rows)} nodes")
        failed = [row for row in rows if row["state"] != "succeeded"]
        if failed:
            result.fail("failed nodes: " + "; ".join(node_problem(row) for row in failed))
        result.artefacts["nodes"] = ctx.relative(workdir)
        return result


def dcgm_level(config: GpuHealthConfig) -> int:
    return config.dcgm_level or DCGM_LEVEL_BY_STAGE[config.stage]


def read_node_health(config: GpuHealthConfig, dcgm_output, budget_s: float, log=print):
    """Every reader on the machine this runs on: NVML (GPUs and XID events), the kernel log, DCGM diagnostics;
    what could not be read is a note, not an error."""
    from dcforge.gpu import dcgm, kernel_log, nvml
    from dcforge.gpu.readings import NodeHealth

    import pynvml

    notes: list[str] = []
    try:
        gpus, nvml_xids = nvml.read_node(config.xid_listen_ms)
    except pynvml.NVMLError as error:  # no driver or no GPU where this runs: judged as no GPU read (judge_health)
        gpus, nvml_xids = [], []
        notes.append(f"NVML could not be read: {error}")
    log(f"NVML: {len(gpus)} GPUs read")
    log_xids, unreadable = kernel_log.kernel_log_xids()
    if unreadable:
        notes.append(unreadable)
    level = dcgm_level(config)
    log(f"DCGM diagnostics level {level}")
    diag, not_run = dcgm.run_diag(level, min(config.dcgm_timeout_s, max(budget_s - 30, 1)), dcgm_output)
    if not_run:
        notes.append(not_run)
    return NodeHealth(gpus=tuple(gpus), xids=tuple(nvml_xids + log_xids), dcgm=diag, notes=tuple(notes))


def judge_health(result: CheckResult, health, level: int, config: GpuHealthConfig) -> CheckResult:
    """The verdict of one node's readings; a node where no GPU could be read is never healthy."""
    health_result(result, health)
    result.details["dcgm_level"] = level
    if not health.gpus:
        result.fail("no GPU could be read" + (f": {health.notes[0]}" if health.notes else ""))
    if config.require_dcgm and health.dcgm is None:
        result.fail(next((note for note in health.notes if "DCGM" in note), "DCGM diagnostics did not run"))
    return result


def fail_shortfall(result: CheckResult, shortfall) -> CheckResult:
    """Fail `result` with a node's GPU shortfall (dcforge.harness.node.GpuShortfall) as its first reason and a
    finding with its recommended action."""
    result.details.setdefault("findings", []).insert(0, shortfall.finding())
    result.details["action"] = most_urgent(Action(f["action"]) for f in result.details["findings"]).value
    result.details["gpu_count"] = {"declared": shortfall.declared, "visible": shortfall.visible}
    earlier = result.reason
    result.reason = ""
    result.fail(str(shortfall))
    if earlier:
        result.fail(earlier)
    return result


def gpu_health_step(config: GpuHealthConfig, expected_gpus: int, pool=None):
    """The readers as a node step (`dcforge/steps/step.py`): the pod writes a GpuHealthResult; judged by
    the local verdict, and the node fails when its pod sees fewer GPUs than the pool declares per node (`pool`:
    the spec's GpuPool of those nodes, which names the shortfall)."""
    from dcforge.harness.node import GpuShortfall
    from dcforge.executors.base import literal
    from dcforge.steps.step import Step
    from dcforge.gpu.readings import node_health_from_dict
    from workloads.records import GPU_HEALTH_FILE, GpuHealthResult, read_result

    def judge(data: bytes) -> CheckResult:
        record = read_result(data.decode().splitlines(), GpuHealthResult, "the node's GPU health")
        judged = judge_health(CheckResult(GpuHealthCheck.name, declared=GpuHealthCheck.metrics),
                              node_health_from_dict(record.health), record.dcgm_level, config)
        seen = len(record.health.get("gpus") or ())
        if seen < expected_gpus:
            fail_shortfall(judged, GpuShortfall(pool.name if pool else "acceptance", pool.gpu_model if pool else "GPU",
                                                expected_gpus, seen, f"in the pod on {record.hostname}"))
        return judged

    settings = literal(config.model_dump_json(by_alias=True))  # one argument
    return Step("gpu_health", ("{python}", "-m", "dcforge.checks.gpu_health", "--settings", settings,
                               "--output", "{volume[results]}/" + GPU_HEALTH_FILE), GPU_HEALTH_FILE, judge)


def main(argv: list[str] | None = None) -> int:
    """The readers on this node (a pod on a pool node): one GpuHealthResult line. NVML that cannot start (no
    driver, no GPU in the pod) is read as no GPUs, with the reason as a note, which the judge fails."""
    import argparse
    import dataclasses
    import socket
    import tempfile
    from pathlib import Path

    from workloads.records import GpuHealthResult, emit_result

    parser = argparse.ArgumentParser(prog="python -m dcforge.checks.gpu_health")
    parser.add_argument("--settings", required=True, help="the check's settings as JSON")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    config = GpuHealthConfig.model_validate_json(args.settings)
    with tempfile.TemporaryDirectory() as scratch:
        health = read_node_health(config, Path(scratch) / "dcgmi-diag.json", config.dcgm_timeout_s + 30)
    emit_result(GpuHealthResult(hostname=socket.gethostname(), dcgm_level=dcgm_level(config),
                                health=dataclasses.asdict(health)), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def health_result(result: CheckResult, health) -> CheckResult:
    """Metrics, details and the verdict of one node's readings (`dcforge.gpu.readings.NodeHealth`)."""
    from dcforge.gpu.verdict import judge_node

    verdict = judge_node(health)
    gpus, diag = health.gpus, health.dcgm
    failing = {f.gpu for f in verdict.failures if f.gpu is not None}
    result.add_metric("gpus_checked", len(gpus))
    result.add_metric("gpus_failing", len(failing))
    result.add_metric("fatal_xids", verdict.failing_xids)
    result.add_metric("ecc_uncorrected_volatile", sum(
        g.ecc.volatile_sram_uncorrected + g.ecc.volatile_dram_uncorrected for g in gpus if g.ecc))
    result.add_metric("row_remaps_pending", sum(1 for g in gpus if g.row_remaps and g.row_remaps.pending))
    result.add_metric("row_remaps_failed", sum(1 for g in gpus if g.row_remaps and g.row_remaps.failed))
    result.add_metric("nvlinks_down", sum(1 for g in gpus for link in g.nvlinks if not link.active))
    temperatures = [g.temperature_c for g in gpus if g.temperature_c is not None]
    if temperatures:
        result.add_metric("temperature_c.max", max(temperatures))
    if diag is not None:
        result.add_metric("dcgm_failures", sum(1 for r in diag.results if r.status == "fail"), f"level {diag.level}")
    result.add_metric("warnings", len(verdict.warnings))
    result.details = {
        "notes": list(health.notes),
        "findings": [f.to_dict() for f in verdict.findings],
        "action": verdict.action.value,  # the node's recommended action (docs/verdicts.md#node-action)
        "gpus": [asdict(g) for g in gpus],
        "xids": [asdict(x) for x in health.xids],
        "dcgm": asdict(diag) if diag else None,
    }
    if not verdict.passed:
        result.fail(verdict.reason)
    return result
