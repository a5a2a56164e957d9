"""Per-GPU health through NVML (`nvidia-ml-py`, imported as `pynvml`).

Every query that the GPU or driver does not support (NVML_ERROR_NOT_SUPPORTED, e.g. row remapping before Ampere,
NVLink on PCIe cards) leaves its field None or empty rather than failing the read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dcforge.gpu.readings import (Clocks, EccCounts, GpuReading, NvLinkState, PcieLink, RetiredPages, RowRemaps,
                                  XidEvent)

T = TypeVar("T")
# nvmlClocksEventReason* bit masks (nvml.h); names as the verdict uses them.
THROTTLE_REASON_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_reason_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASON_BITS.items() if mask & bit)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReader:
    """Reads GpuReadings through an initialised NVML module (`pynvml`, or anything with its functions)."""

    def __init__(self, nvml: Any):
        self.nvml = nvml

    def _optional(self, query: Callable[[], T]) -> T | None:
        try:
            return query()
        except self.nvml.NVMLError:
            return None

    def device_count(self) -> int:
        return int(self.nvml.nvmlDeviceGetCount())

    def read(self, index: int) -> GpuReading:
        nv = self.nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        optional = self._optional
        ecc_mode = optional(lambda: nv.nvmlDeviceGetEccMode(handle))
        ecc_enabled = None if ecc_mode is None else bool(ecc_mode[0])
        return GpuReading(
            index=index,
            name=_text(nv.nvmlDeviceGetName(handle)),
            pci_bus_id=_text(nv.nvmlDeviceGetPciInfo(handle).busId),
            uuid=_text(optional(lambda: nv.nvmlDeviceGetUUID(handle)) or ""),
            ecc_enabled=ecc_enabled,
            ecc=self._ecc(handle) if ecc_enabled else None,
            row_remaps=self._row_remaps(handle),
            retired_pages=self._retired_pages(handle),
            nvlinks=self._nvlinks(handle),
            pcie=self._pcie(handle),
            clocks=self._clocks(handle),
            temperature_c=optional(lambda: float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))),
            slowdown_temperature_c=optional(lambda: float(nv.nvmlDeviceGetTemperatureThreshold(
                handle, nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN))),
            power_w=optional(lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0),
            power_limit_w=optional(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
        )

    def _ecc(self, handle: Any) -> EccCounts | None:
        nv = self.nvml

        def count(error_type: int, counter: int, location: int) -> int:
            return int(self._optional(lambda: nv.nvmlDeviceGetMemoryErrorCounter(handle, error_type, counter,
                                                                                 location)) or 0)

        uncorrected = nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        return EccCounts(
            volatile_sram_uncorrected=count(uncorrected, nv.NVML_VOLATILE_ECC, nv.NVML_MEMORY_LOCATION_SRAM),
            volatile_dram_uncorrected=count(uncorrected, nv.NVML_VOLATILE_ECC, nv.NVML_MEMORY_LOCATION_DRAM),
            aggregate_sram_uncorrected=count(uncorrected, nv.NVML_AGGREGATE_ECC, nv.NVML_MEMORY_LOCATION_SRAM),
            aggregate_dram_uncorrected=count(uncorrected, nv.NVML_AGGREGATE_ECC, nv.NVML_MEMORY_LOCATION_DRAM),
            volatile_corrected=int(self._optional(lambda: nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC)) or 0),
            aggregate_corrected=int(self._optional(lambda: nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_AGGREGATE_ECC)) or 0),
        )

    def _row_remaps(self, handle: Any) -> RowRemaps | None:
        remapped = self._optional(lambda: self.nvml.nvmlDeviceGetRemappedRows(handle))
        if remapped is None:
            return None
        corrected, uncorrected, pending, failed = remapped
        return RowRemaps(int(corrected), int(uncorrected), bool(pending), bool(failed))

    def _retired_pages(self, handle: Any) -> RetiredPages | None:
        nv = self.nvml
        pending = self._optional(lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(handle))
        if pending is None:
            return None
        single = self._optional(lambda: nv.nvmlDeviceGetRetiredPages(
            handle, nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)) or []
        double = self._optional(lambda: nv.nvmlDeviceGetRetiredPages(
            handle, nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)) or []
        return RetiredPages(len(single), len(double), bool(pending))

    def _nvlinks(self, handle: Any) -> tuple[NvLinkState, ...]:
        nv = self.nvml
        links = []
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            state = self._optional(lambda: nv.nvmlDeviceGetNvLinkState(handle, link))
            if state is None:  # the GPU has no such link
                continue

            def errors(counter: int) -> int:
                return int(self._optional(lambda: nv.nvmlDeviceGetNvLinkErrorCounter(handle, link, counter)) or 0)

            links.append(NvLinkState(
                link=link, active=state == nv.NVML_FEATURE_ENABLED,
                replay_errors=errors(nv.NVML_NVLINK_ERROR_DL_REPLAY),
                recovery_errors=errors(nv.NVML_NVLINK_ERROR_DL_RECOVERY),
                crc_errors=errors(nv.NVML_NVLINK_ERROR_DL_CRC_FLIT) + errors(nv.NVML_NVLINK_ERROR_DL_CRC_DATA),
            ))
        return tuple(links)

    def _pcie(self, handle: Any) -> PcieLink | None:
        nv = self.nvml
        values = [self._optional(lambda q=query: q(handle)) for query in (
            nv.nvmlDeviceGetCurrPcieLinkGeneration, nv.nvmlDeviceGetCurrPcieLinkWidth,
            nv.nvmlDeviceGetMaxPcieLinkGeneration, nv.nvmlDeviceGetMaxPcieLinkWidth)]
        if any(value is None for value in values):
            return None
        return PcieLink(*(int(value) for value in values))

    def _clocks(self, handle: Any) -> Clocks | None:
        nv = self.nvml
        sm = self._optional(lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM))
        if sm is None:
            return None
        max_sm = self._optional(lambda: nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_SM)) or 0
        reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = self._optional(lambda: reasons(handle)) or 0
        return Clocks(int(sm), int(max_sm), throttle_reason_names(int(mask)))

    def xid_events(self, handles_count: int, wait_ms: int) -> list[XidEvent]:
        """XIDs NVML reports while we listen for `wait_ms` (history comes from the kernel log)."""
        nv = self.nvml
        event_set = nv.nvmlEventSetCreate()
        events: list[XidEvent] = []
        try:
            for index in range(handles_count):
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                self._optional(lambda: nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, event_set))
            while True:
                try:
                    data = nv.nvmlEventSetWait(event_set, wait_ms)
                except nv.NVMLError:  # NVML_ERROR_TIMEOUT: nothing more happened
                    break
                bus_id = _text(nv.nvmlDeviceGetPciInfo(data.device).busId)
                events.append(XidEvent(int(data.eventData), bus_id, "", "nvml"))
                wait_ms = 0
        finally:
            nv.nvmlEventSetFree(event_set)
        return events


def read_node(wait_for_xid_ms: int = 1000) -> tuple[list[GpuReading], list[XidEvent]]:
    """Every visible GPU's reading and the XIDs NVML reports while listening; NVML shut down afterwards."""
    import pynvml

    pynvml.nvmlInit()
    try:
        reader = NvmlReader(pynvml)
        count = reader.device_count()
        readings = [reader.read(index) for index in range(count)]
        return readings, reader.xid_events(count, wait_for_xid_ms)
    finally:
        pynvml.nvmlShutdown()
