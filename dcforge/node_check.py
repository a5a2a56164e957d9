"""`dcforge node-check --fast`: the passive health of this one node, for a Slurm Prolog or HealthCheckProgram.

Passive: it reads, it never loads the GPUs or the network, and it calls no Slurm command (a Prolog runs on every
job start, and slurmd waits for it). What it reads: every GPU's health through NVML (ECC, row remaps, retired
pages, NVLink, PCIe link, throttling: the `gpu_health` verdict's own rules, dcforge.gpu.verdict) and how many GPUs
are visible against the number expected; the XIDs in the kernel log; the driver version; that each expected folder
is a mount point; that each expected network interface is up. docs/slurm.md#fast-node-check.

Output and exit status, as Slurm's Prolog and NHC expect: one line on stdout; exit 0 when the node is healthy
(`OK dcforge node-check: ...`), 1 when it is not (`ERROR dcforge node-check: <finding>; action=<action>`, the
most urgent finding first, the recommended action from dcforge.findings); bad arguments exit 2. A Prolog that
exits non-zero makes slurmd drain the node and requeue the job; as a HealthCheckProgram the exit status and the
line are logged, and the drain is the wrapper's (NHC's `die`, or `scontrol` in the site's script).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from dcforge.findings import Action, Severity, most_urgent

NET = Path("/sys/class/net")
UP_STATES = ("up", "unknown")
"""An interface's operstate when it carries traffic (`unknown`: loopback and some virtual links say so)."""


@dataclass(frozen=True)
class Expectations:
    gpus: int | None = None
    """GPUs this node must show; None: whatever is visible (none on a CPU node)."""
    driver: str | None = None
    mounts: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeFinding:
    severity: Severity
    action: Action
    message: str


@dataclass
class NodeCheck:
    findings: list[NodeFinding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, action: Action, message: str, severity: Severity = Severity.FAIL) -> None:
        self.findings.append(NodeFinding(severity, action, " ".join(message.split())))

    @property
    def failures(self) -> list[NodeFinding]:
        return [f for f in self.findings if f.severity is Severity.FAIL]

    def line(self, elapsed_s: float) -> str:
        """The one line Slurm logs: OK with what was checked, or ERROR with the most urgent failure first."""
        failures = self.failures
        if not failures:
            notes = f"; {'; '.join(self.notes)}" if self.notes else ""
            return f"OK dcforge node-check: {', '.join(self.checked) or 'nothing expected'} ({elapsed_s:.2f} s){notes}"
        action = most_urgent(f.action for f in failures)
        first = sorted(failures, key=lambda f: f.action is not action)
        return f"ERROR dcforge node-check: {'; '.join(f.message for f in first)}; action={action.value}"


def check_gpus(result: NodeCheck, expected: Expectations) -> None:
    """NVML's readings and XIDs, the kernel log's XIDs and the driver version of this node, judged (`judge_gpus`)."""
    from dcforge.gpu.kernel_log import kernel_log_xids
    from dcforge.harness.node import MISSING_GPU_ACTION

    try:
        from dcforge.gpu.nvml import read_node

        readings, nvml_xids = read_node(wait_for_xid_ms=0)
        driver = _driver_version()
    except Exception as error:  # noqa: BLE001 (no pynvml, no driver, NVML refusing: the GPUs are not readable)
        if expected.gpus:
            why = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            result.add(MISSING_GPU_ACTION, f"{expected.gpus} GPUs expected, NVML unreadable: {why}")
        else:
            result.notes.append("no NVIDIA driver (no GPU expected)")
        readings, nvml_xids, driver = [], [], None
    kernel_xids, why = kernel_log_xids()
    if why:
        result.notes.append(why)
    judge_gpus(result, expected, readings, [*nvml_xids, *kernel_xids], driver)


def judge_gpus(result: NodeCheck, expected: Expectations, readings: list, xids: list, driver: str | None) -> None:
    """The gpu_health rules (dcforge.gpu.verdict) on the readings and XIDs, each failure with its recommended action;
    the GPU count and the driver version against what is expected."""
    from dcforge.gpu.readings import NodeHealth
    from dcforge.gpu.verdict import judge_node
    from dcforge.harness.node import MISSING_GPU_ACTION

    result.checked.append(f"{len(readings)} GPUs")
    if expected.gpus is not None and readings and len(readings) < expected.gpus:
        result.add(MISSING_GPU_ACTION, f"{len(readings)} of {expected.gpus} expected GPUs visible")
    verdict = judge_node(NodeHealth(tuple(readings), tuple(xids)))
    for finding in verdict.failures:  # the gpu_health rules' own recommended action (a failure without one: service)
        result.add(finding.action if finding.action is not Action.NONE else Action.DRAIN_AND_SERVICE, str(finding))
    result.checked.append("XIDs")
    if expected.driver and driver is not None:
        result.checked.append(f"driver {driver}")
        if driver != expected.driver:
            result.add(Action.DRAIN_AND_SERVICE, f"driver {driver}, expected {expected.driver}")


def _driver_version() -> str | None:
    """The loaded NVIDIA kernel module's version (/proc/driver/nvidia/version), None without one."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = text.split()
    return next((w for w in words if w.count(".") >= 1 and w.replace(".", "").isdigit()), None)


def check_mounts(result: NodeCheck, mounts: tuple[str, ...]) -> None:
    for mount in mounts:
        result.checked.append(f"mount {mount}")
        if not os.path.ismount(mount):
            result.add(Action.REBOOT_NODE, f"{mount} is not mounted")


def check_interfaces(result: NodeCheck, interfaces: tuple[str, ...]) -> None:
    for name in interfaces:
        result.checked.append(f"interface {name}")
        try:
            state = (NET / name / "operstate").read_text().strip()
        except OSError:
            result.add(Action.CHECK_FABRIC, f"interface {name} does not exist")
            continue
        if state not in UP_STATES:
            result.add(Action.CHECK_FABRIC, f"interface {name} is {state}")


def fast_check(expected: Expectations) -> tuple[int, str]:
    """The exit status and the one line (see the module docstring)."""
    started = time.monotonic()
    result = NodeCheck()
    check_gpus(result, expected)
    check_mounts(result, expected.mounts)
    check_interfaces(result, expected.interfaces)
    return (1 if result.failures else 0), result.line(time.monotonic() - started)


def expectations_from_env(loaded, pool: str | None) -> Expectations:
    """What an environment file expects of a node of `pool` (default the acceptance pool): its GPUs per node, the
    pinned driver, target slurm's collectives' interface (mounts are named with --mount)."""
    spec = loaded.spec
    chosen = spec.pool(pool) if pool else spec.acceptance_pool
    slurm = spec.acceptance.slurm
    return Expectations(gpus=chosen.gpus_per_node if chosen else None, driver=spec.versions.driver,
                        interfaces=(slurm.socket_ifname,) if slurm and slurm.socket_ifname else ())
