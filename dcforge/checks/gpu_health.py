"""`gpu_health`: is every GPU of this node fit to run jobs? NVML state, XIDs, DCGM diagnostics.

Readers in `dcforge.gpu` produce typed readings; `dcforge.gpu.verdict` judges them (the rules are listed there).
Skipped with its reason where no GPU is visible: a node without GPUs is never reported as healthy.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from pydantic import Field

from dcforge.gpu.verdict import pci_device
from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, CheckSkipped

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


def no_gpu_reason() -> str | None:
    from dcforge.harness.node import visible_gpus

    if visible_gpus():
        return None
    return "no GPU visible (nvidia-smi and torch.cuda see none): GPU health cannot be read on this machine"


class GpuHealthCheck:
    name = "gpu_health"
    description = ("Per-GPU ECC, row remaps, retired pages, XIDs, NVLink, PCIe, clocks, temperature, power (NVML) "
                   "and DCGM diagnostics; fatal XIDs and pending or failed row remaps fail the node.")
    Config = GpuHealthConfig
    requires_declared_gpus = False  # reads whatever GPUs are visible (a missing one is the system check's finding)
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

    def run(self, ctx: CheckContext, config: GpuHealthConfig) -> CheckResult:
        from dcforge.gpu import dcgm, kernel_log, nvml
        from dcforge.gpu.readings import NodeHealth

        if reason := no_gpu_reason():
            raise CheckSkipped(reason)
        result = CheckResult(self.name, declared=self.metrics)
        notes: list[str] = []
        gpus, nvml_xids = nvml.read_node(config.xid_listen_ms)
        ctx.log(f"NVML: {len(gpus)} GPUs read")
        log_xids, unreadable = kernel_log.kernel_log_xids()
        if unreadable:
            notes.append(unreadable)
        level = config.dcgm_level or DCGM_LEVEL_BY_STAGE[config.stage]
        ctx.log(f"DCGM diagnostics level {level}")
        dcgm_output = ctx.artefact_dir(self.name) / f"dcgmi-diag-r{level}.json"
        diag, not_run = dcgm.run_diag(level, min(config.dcgm_timeout_s, max(ctx.remaining_s() - 30, 1)),
                                      dcgm_output)
        if not_run:
            notes.append(not_run)
        else:
            result.artefacts["dcgm_diag"] = ctx.relative(dcgm_output)
        health = NodeHealth(gpus=tuple(gpus), xids=tuple(nvml_xids + log_xids), dcgm=diag, notes=tuple(notes))
        health_result(result, health)
        result.details["dcgm_level"] = level
        if config.require_dcgm and diag is None:
            result.fail(not_run or "DCGM diagnostics did not run")
        for note in notes:
            ctx.log(note)
        return result


def health_result(result: CheckResult, health) -> CheckResult:
    """Metrics, details and the verdict of one node's readings (`dcforge.gpu.readings.NodeHealth`)."""
    from dcforge.gpu.verdict import FATAL_XIDS, judge_node

    verdict = judge_node(health)
    gpus, diag = health.gpus, health.dcgm
    failing = {f.gpu for f in verdict.failures if f.gpu is not None}
    result.add_metric("gpus_checked", len(gpus))
    result.add_metric("gpus_failing", len(failing))
    result.add_metric("fatal_xids", len({(x.xid, pci_device(x.pci_bus_id)) for x in health.xids
                                         if x.xid in FATAL_XIDS}))
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
        "findings": [{"severity": f.severity, "gpu": f.gpu, "message": f.message} for f in verdict.findings],
        "gpus": [asdict(g) for g in gpus],
        "xids": [asdict(x) for x in health.xids],
        "dcgm": asdict(diag) if diag else None,
    }
    if not verdict.passed:
        result.fail(verdict.reason)
    return result
