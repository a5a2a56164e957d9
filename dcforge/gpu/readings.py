"""What one GPU node reports about its health, as typed records the verdicts are computed from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class EccCounts:
    """Uncorrectable and correctable ECC error counts (NVML nvmlDeviceGetMemoryErrorCounter).

    Volatile counts cover the time since the last driver load; aggregate counts the GPU's whole life.
    """

    volatile_sram_uncorrected: int = 0
    volatile_dram_uncorrected: int = 0
    aggregate_sram_uncorrected: int = 0
    aggregate_dram_uncorrected: int = 0
    volatile_corrected: int = 0
    aggregate_corrected: int = 0


@dataclass(frozen=True)
class RowRemaps:
    """nvmlDeviceGetRemappedRows: rows remapped for correctable/uncorrectable errors, a remap waiting for a GPU
    reset, and whether a remap failed (no spare rows left)."""

    corrected_rows: int = 0
    uncorrected_rows: int = 0
    pending: bool = False
    failed: bool = False


@dataclass(frozen=True)
class RetiredPages:
    """Dynamic page retirement (pre-Ampere GPUs; Ampere and newer remap rows instead)."""

    single_bit: int = 0
    double_bit: int = 0
    pending: bool = False


@dataclass(frozen=True)
class NvLinkState:
    link: int
    active: bool
    replay_errors: int = 0
    recovery_errors: int = 0
    crc_errors: int = 0


@dataclass(frozen=True)
class PcieLink:
    generation: int
    width: int
    max_generation: int
    max_width: int


@dataclass(frozen=True)
class Clocks:
    sm_mhz: int
    max_sm_mhz: int
    throttle_reasons: tuple[str, ...] = ()
    """Names of the active clock event (throttle) reasons, e.g. ("hw_thermal_slowdown",)."""


@dataclass(frozen=True)
class XidEvent:
    xid: int
    pci_bus_id: str
    """As the source wrote it: `0000:3b:00` in the kernel log, `00000000:3B:00.0` from NVML."""
    message: str = ""
    source: Literal["nvml", "kernel log"] = "kernel log"


@dataclass(frozen=True)
class GpuReading:
    """One GPU's health as NVML reports it. A field is None when the GPU or driver does not support it."""

    index: int
    name: str
    pci_bus_id: str
    uuid: str = ""
    ecc_enabled: bool | None = None
    ecc: EccCounts | None = None
    row_remaps: RowRemaps | None = None
    retired_pages: RetiredPages | None = None
    nvlinks: tuple[NvLinkState, ...] = ()
    pcie: PcieLink | None = None
    clocks: Clocks | None = None
    temperature_c: float | None = None
    slowdown_temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None


@dataclass(frozen=True)
class DcgmTestResult:
    test: str
    status: Literal["pass", "fail", "warn", "skip", "not run"]
    gpu: int | None = None
    """The GPU the result is about; None for node-wide results."""
    message: str = ""
    error_severity: int | None = None
    """DCGM 4's dcgmErrorSeverity_t of the result's warnings, the gravest one (6: the GPU needs a reset)."""


@dataclass(frozen=True)
class DcgmDiag:
    """`dcgmi diag -r LEVEL -j`, parsed."""

    level: int
    results: tuple[DcgmTestResult, ...] = ()
    version: str = ""


@dataclass(frozen=True)
class NodeHealth:
    """Everything the gpu_health verdict looks at for one node."""

    gpus: tuple[GpuReading, ...]
    xids: tuple[XidEvent, ...] = ()
    dcgm: DcgmDiag | None = None
    notes: tuple[str, ...] = field(default=())
    """What could not be read (kernel log unreadable, DCGM not installed), reported with the verdict."""


def node_health_from_dict(data: dict) -> NodeHealth:
    """A NodeHealth back from `dataclasses.asdict` of one (as a node's pod hands it over, JSON in between)."""
    def optional(cls, value):
        return cls(**value) if value is not None else None

    def gpu(value: dict) -> GpuReading:
        clocks = value.get("clocks")
        return GpuReading(**{**value, "ecc": optional(EccCounts, value.get("ecc")),
                             "row_remaps": optional(RowRemaps, value.get("row_remaps")),
                             "retired_pages": optional(RetiredPages, value.get("retired_pages")),
                             "nvlinks": tuple(NvLinkState(**link) for link in value.get("nvlinks") or ()),
                             "pcie": optional(PcieLink, value.get("pcie")),
                             "clocks": Clocks(**{**clocks, "throttle_reasons": tuple(clocks["throttle_reasons"])})
                             if clocks else None})

    diag = data.get("dcgm")
    return NodeHealth(gpus=tuple(gpu(g) for g in data.get("gpus") or ()),
                      xids=tuple(XidEvent(**x) for x in data.get("xids") or ()),
                      dcgm=DcgmDiag(**{**diag, "results": tuple(DcgmTestResult(**r) for r in diag["results"])})
                      if diag else None,
                      notes=tuple(data.get("notes") or ()))
