"""Pure verdicts over `readings`: which findings fail a node, which only warn, and the one-line reason.

Rules, in the terms of NVIDIA's public XID catalogue and GPU memory error management guide:
- an XID in NVML events or the kernel log since boot is judged by NVIDIA's XID catalogue and the driver's own
  words (dcforge/gpu/xid.py): those whose resolution needs a GPU reset, a reboot, service or the vendor fail the
  node; those an application restart clears warn;
- a pending row remap (needs a GPU reset) or a failed remap (no spare rows left: replace the GPU) fails it, and so
  do pending page retirements on GPUs that retire pages instead;
- volatile uncorrectable ECC errors fail it (data was lost since the driver loaded); lifetime (aggregate) ones warn;
- an NVLink that the GPU has but that is down fails it; NVLink replay/recovery/CRC errors warn;
- a PCIe link narrower than the slot's maximum fails it; a lower generation only warns, because GPUs drop the link
  generation when idle to save power;
- hardware slowdown, hardware thermal slowdown and power-brake throttling fail it; software thermal slowdown and a
  temperature within 5 °C of the slowdown threshold warn;
- a DCGM diagnostic test that fails fails the node; a warning warns.

Every finding carries a severity and a recommended action (dcforge.findings); the node's action is the most urgent
of its findings' (docs/verdicts.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dcforge.findings import Action, Severity, most_urgent
from dcforge.gpu.readings import DcgmDiag, GpuReading, NodeHealth, XidEvent
from dcforge.gpu.xid import catalogue, judge_xid, pci_device

# Clock event reasons that mean the hardware protects itself; the others (idle, application clocks, software power
# cap, sync boost) are normal operation.
FAILING_THROTTLE_REASONS = frozenset({"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})
WARNING_THROTTLE_REASONS = frozenset({"sw_thermal_slowdown"})
TEMPERATURE_MARGIN_C = 5.0
DCGM_ERROR_RESET = 6
"""dcgmErrorSeverity_t DCGM_ERROR_RESET: the GPU cannot take work until it is reset (other failures: drain and
service, DCGM's isolate/triage/config)."""

@dataclass(frozen=True)
class Finding:
    severity: Severity
    gpu: int | None
    """GPU index, or None for a node-wide finding."""
    message: str
    action: Action = Action.NONE
    """What an operator should do about it."""
    xid: int | None = None
    """The XID this finding is about, if any."""

    def to_dict(self) -> dict:
        return {"severity": self.severity.value, "action": self.action.value, "gpu": self.gpu,
                "message": self.message, **({"xid": self.xid} if self.xid is not None else {})}

    def __str__(self) -> str:
        return f"GPU {self.gpu}: {self.message}" if self.gpu is not None else self.message


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    """One line: every failing finding, or '' when the node passed."""
    findings: tuple[Finding, ...] = field(default=())

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "fail"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warn"]

    @property
    def action(self) -> Action:
        """The node's one recommended action: the most urgent of its findings'."""
        return most_urgent(f.action for f in self.findings)

    @property
    def failing_xids(self) -> int:
        return sum(1 for f in self.failures if f.xid is not None)


def judge_gpu(gpu: GpuReading) -> list[Finding]:
    findings: list[Finding] = []

    def add(severity: str, message: str, action: Action = Action.NONE) -> None:
        findings.append(Finding(Severity(severity), gpu.index, message, action))

    if gpu.ecc is not None:
        volatile = gpu.ecc.volatile_sram_uncorrected + gpu.ecc.volatile_dram_uncorrected
        aggregate = gpu.ecc.aggregate_sram_uncorrected + gpu.ecc.aggregate_dram_uncorrected
        if volatile:
            add("fail", f"{volatile} uncorrectable ECC errors since the driver loaded "
                        f"(SRAM {gpu.ecc.volatile_sram_uncorrected}, DRAM {gpu.ecc.volatile_dram_uncorrected})",
                Action.RESET_GPU)
        elif aggregate:
            add("warn", f"{aggregate} uncorrectable ECC errors in the GPU's lifetime "
                        f"(SRAM {gpu.ecc.aggregate_sram_uncorrected}, DRAM {gpu.ecc.aggregate_dram_uncorrected})")
    if gpu.ecc_enabled is False:
        add("warn", "ECC is disabled")
    if gpu.row_remaps is not None:
        if gpu.row_remaps.failed:
            add("fail", "a row remap failed (no spare rows left): replace the GPU", Action.CONTACT_VENDOR)
        if gpu.row_remaps.pending:
            add("fail", "a row remap is pending: reset the GPU to apply it", Action.RESET_GPU)
    if gpu.retired_pages is not None and gpu.retired_pages.pending:
        add("fail", "a page retirement is pending: reset the GPU to apply it", Action.RESET_GPU)
    down = [link.link for link in gpu.nvlinks if not link.active]
    if down:
        add("fail", f"NVLink {', '.join(map(str, down))} down ({len(gpu.nvlinks) - len(down)}/{len(gpu.nvlinks)} up)",
            Action.RESET_GPU)
    errors = {name: sum(getattr(link, f"{name}_errors") for link in gpu.nvlinks)
              for name in ("replay", "recovery", "crc")}
    if any(errors.values()):
        add("warn", "NVLink errors: " + ", ".join(f"{count} {name}" for name, count in errors.items() if count),
            Action.CHECK_FABRIC)
    if gpu.pcie is not None:
        if gpu.pcie.width < gpu.pcie.max_width:
            add("fail", f"PCIe link x{gpu.pcie.width}, below its maximum x{gpu.pcie.max_width}",
                Action.DRAIN_AND_SERVICE)
        if gpu.pcie.generation < gpu.pcie.max_generation:
            add("warn", f"PCIe gen {gpu.pcie.generation} of max {gpu.pcie.max_generation} "
                        "(normal when idle, wrong under load)")
    if gpu.clocks is not None:
        failing = sorted(FAILING_THROTTLE_REASONS.intersection(gpu.clocks.throttle_reasons))
        warning = sorted(WARNING_THROTTLE_REASONS.intersection(gpu.clocks.throttle_reasons))
        if failing:
            add("fail", f"clocks throttled by {', '.join(failing)} "
                        f"({gpu.clocks.sm_mhz} of {gpu.clocks.max_sm_mhz} MHz)", Action.DRAIN_AND_SERVICE)
        if warning:
            add("warn", f"clocks throttled by {', '.join(warning)}")
    if gpu.temperature_c is not None and gpu.slowdown_temperature_c:
        if gpu.temperature_c >= gpu.slowdown_temperature_c:
            add("fail", f"{gpu.temperature_c:g} °C, at or above the slowdown threshold "
                        f"{gpu.slowdown_temperature_c:g} °C", Action.DRAIN_AND_SERVICE)
        elif gpu.temperature_c >= gpu.slowdown_temperature_c - TEMPERATURE_MARGIN_C:
            add("warn", f"{gpu.temperature_c:g} °C, within {TEMPERATURE_MARGIN_C:g} °C of slowdown")
    if gpu.power_w is not None and gpu.power_limit_w and gpu.power_w > gpu.power_limit_w:
        add("warn", f"drawing {gpu.power_w:.0f} W, above its {gpu.power_limit_w:.0f} W limit")
    return findings


def judge_xids(xids: tuple[XidEvent, ...] | list[XidEvent], gpus: tuple[GpuReading, ...]) -> list[Finding]:
    """Each XID judged by NVIDIA's catalogue and the driver's words (dcforge/gpu/xid.py), attributed to the GPU on
    its PCI address when one matches; NVML and the kernel log reporting the same event count once."""
    by_device = {pci_device(gpu.pci_bus_id): gpu.index for gpu in gpus}
    on_device: dict[str, set[int]] = {}
    for event in xids:
        on_device.setdefault(pci_device(event.pci_bus_id), set()).add(event.xid)
    findings: list[Finding] = []
    seen: set[tuple[int, str, str]] = set()
    for event in xids:
        device = pci_device(event.pci_bus_id)
        judged = judge_xid(event, frozenset(on_device[device] - {event.xid}))
        if (event.xid, device, judged.action.value) in seen:
            continue
        seen.add((event.xid, device, judged.action.value))
        gpu = by_device.get(device)
        where = "" if gpu is not None else f"PCI {device}: "
        source = "NVML events" if event.source == "nvml" else "the kernel log"
        rule = catalogue().get(event.xid)
        name = f" ({rule.description or rule.mnemonic})" if rule else ""
        message = f"{where}XID {event.xid}{name} in {source}: {judged.action.label} ({judged.why})"
        findings.append(Finding(judged.severity, gpu, message, judged.action, event.xid))
    return findings


def judge_dcgm(diag: DcgmDiag) -> list[Finding]:
    findings = []
    for result in diag.results:
        if result.status in ("fail", "warn"):
            detail = f": {result.message}" if result.message else ""
            failed = result.status == "fail"
            action = Action.NONE if not failed else (Action.RESET_GPU if result.error_severity == DCGM_ERROR_RESET
                                                     else Action.DRAIN_AND_SERVICE)
            findings.append(Finding(Severity.FAIL if failed else Severity.WARN, result.gpu,
                                    f"DCGM diag level {diag.level} {result.test} {result.status}ed{detail}", action))
    return findings


def judge_node(health: NodeHealth) -> Verdict:
    """The node's verdict: failed when any finding fails; the reason lists every failing finding on one line."""
    findings = [finding for gpu in health.gpus for finding in judge_gpu(gpu)]
    findings += judge_xids(health.xids, health.gpus)
    if health.dcgm is not None:
        findings += judge_dcgm(health.dcgm)
    failures = [str(f) for f in findings if f.severity == "fail"]
    reason = "; ".join(" ".join(line.split()) for line in failures)
    return Verdict(passed=not failures, reason=reason, findings=tuple(findings))
