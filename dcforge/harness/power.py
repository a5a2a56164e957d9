"""Power sampling around a workload: NVML per GPU, RAPL (/sys/class/powercap) per CPU package.

A `PowerSensor` returns the power of each of its channels (`gpu0`, `cpu-package-0`, ...) in watts; a
`PowerSampler` polls every sensor from a background thread while a check's workload runs and keeps the trace.
Energy is the trapezoidal integral of each channel's samples over time. Where no sensor is exposed (no NVIDIA
driver, no readable RAPL counters: containers, VMs, most non-Intel CPUs) nothing is sampled and the energy
metrics are skipped with the reason: never zero, never estimated.

Checks use it in two lines:

    with sample_power(ctx) as power:
        run_the_workload()
    record_energy(result, power, work=tokens, ...)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dcforge.harness.result import CheckResult, Plot, Series

DEFAULT_INTERVAL_S = 0.1
RAPL_ROOT = Path("/sys/class/powercap")
ENERGY_FORMULA = "E = ∫P dt (trapezoid over samples) summed over channels"


class PowerSensor(Protocol):
    """One source of power readings. `read()` returns watts per channel; it must be cheap (called every
    interval) and thread-safe with respect to itself only (one sampler thread calls it)."""

    name: str

    def read(self) -> dict[str, float]:
        ...

    def close(self) -> None:
        ...


class NvmlSensor:
    """Board power of every visible NVIDIA GPU (nvmlDeviceGetPowerUsage, milliwatts)."""

    name = "nvml"

    def __init__(self) -> None:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self._handles:
            pynvml.nvmlShutdown()
            raise RuntimeError("NVML sees no GPU")

    def read(self) -> dict[str, float]:
        return {f"gpu{i}": self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
                for i, handle in enumerate(self._handles)}

    def close(self) -> None:
        self._nvml.nvmlShutdown()


@dataclass
class _RaplZone:
    channel: str
    energy_file: Path
    max_range_uj: int
    last_uj: int = 0
    last_t: float = 0.0


class RaplSensor:
    """CPU package power from the RAPL energy counters (`intel-rapl:N/energy_uj`): the counter's increase since the
    previous read over the time between them, the wrap at `max_energy_range_uj` accounted for."""

    name = "rapl"

    def __init__(self, root: Path = RAPL_ROOT, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._zones: list[_RaplZone] = []
        for zone in sorted(root.glob("intel-rapl:[0-9]*")):
            if zone.name.count(":") != 1:  # intel-rapl:0:0 are sub-zones (core, uncore) of package 0
                continue
            energy = zone / "energy_uj"
            label = (zone / "name").read_text().strip() if (zone / "name").is_file() else zone.name
            self._zones.append(_RaplZone(f"cpu-{label}", energy, int((zone / "max_energy_range_uj").read_text())))
        if not self._zones:
            raise RuntimeError(f"no RAPL package zone under {root}")
        now = self._clock()
        for zone in self._zones:
            zone.last_uj, zone.last_t = int(zone.energy_file.read_text()), now  # PermissionError when not root

    def read(self) -> dict[str, float]:
        now = self._clock()
        watts = {}
        for zone in self._zones:
            current = int(zone.energy_file.read_text())
            delta = current - zone.last_uj if current >= zone.last_uj else zone.max_range_uj - zone.last_uj + current
            elapsed = now - zone.last_t
            if elapsed > 0:
                watts[zone.channel] = delta / 1e6 / elapsed
            zone.last_uj, zone.last_t = current, now
        return watts

    def close(self) -> None:
        pass


def discover_sensors(rapl_root: Path = RAPL_ROOT) -> tuple[list[PowerSensor], list[str]]:
    """The sensors this machine exposes, and for each kind that is missing, why."""
    sensors: list[PowerSensor] = []
    missing: list[str] = []
    try:
        sensors.append(NvmlSensor())
    except ImportError:
        missing.append("NVML: nvidia-ml-py is not installed")
    except Exception as error:  # NVMLError_LibraryNotFound, DriverNotLoaded, no GPU
        missing.append(f"NVML: {error or type(error).__name__}")
    try:
        sensors.append(RaplSensor(rapl_root))
    except (OSError, RuntimeError, ValueError) as error:
        missing.append(f"RAPL: {error}")
    return sensors, missing


@dataclass
class PowerTrace:
    """Samples of every channel: t is seconds since sampling started."""

    sensors: list[str]
    skipped_reason: str = ""
    """Why nothing was sampled (no sensor exposed); empty when sensors were sampled."""
    t: list[float] = field(default_factory=list)
    watts: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def channels(self) -> list[str]:
        return sorted({channel for sample in self.watts for channel in sample})

    def series(self, channel: str) -> tuple[list[float], list[float]]:
        pairs = [(t, sample[channel]) for t, sample in zip(self.t, self.watts) if channel in sample]
        return [t for t, _ in pairs], [w for _, w in pairs]

    def energy_j(self, channel: str) -> float:
        xs, ys = self.series(channel)
        return sum((xs[i] - xs[i - 1]) * (ys[i] + ys[i - 1]) / 2 for i in range(1, len(xs)))

    def usable(self) -> bool:
        return not self.skipped_reason and any(len(self.series(c)[0]) >= 2 for c in self.channels)


class PowerSampler:
    """Polls `sensors` every `interval_s` from a daemon thread between `start()` and `stop()`."""

    def __init__(self, sensors: list[PowerSensor], interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.trace = PowerTrace(sensors=[s.name for s in sensors])
        self._sensors = sensors
        self._interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="power-sampler", daemon=True)
        self._t0 = 0.0

    def _sample(self) -> None:
        reading: dict[str, float] = {}
        for sensor in self._sensors:
            try:
                reading.update(sensor.read())
            except Exception as error:  # a sensor that fails mid-run loses samples, never the workload
                if len(self.trace.errors) < 10:
                    self.trace.errors.append(f"{sensor.name}: {error}")
        if reading:
            self.trace.t.append(self._clock() - self._t0)
            self.trace.watts.append(reading)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def start(self) -> None:
        self._t0 = self._clock()
        self._sample()
        self._thread.start()

    def stop(self) -> PowerTrace:
        self._stop.set()
        self._thread.join()
        self._sample()  # the last interval, up to the end of the workload
        for sensor in self._sensors:
            sensor.close()
        return self.trace


@contextmanager
def sample_power(sensors: tuple[list[PowerSensor], list[str]] | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S) -> Iterator[PowerTrace]:
    """Sample every discovered sensor while the body runs; the yielded trace is filled when the body ends.
    With no sensor, the trace carries the reason and nothing runs in the background."""
    found, missing = sensors if sensors is not None else discover_sensors()
    if not found:
        yield PowerTrace(sensors=[], skipped_reason="no power sensor exposed: " + "; ".join(missing))
        return
    sampler = PowerSampler(found, interval_s)
    sampler.start()
    try:
        yield sampler.trace
    finally:
        sampler.stop()


def record_energy(result: CheckResult, trace: PowerTrace, *, work: float = 0.0, work_metric: str = "",
                  work_unit: str = "", per_joule: bool = False) -> None:
    """Add the energy metrics of one workload to `result`, or record why they are skipped.

    Per channel: `power_w.<channel>.avg` (energy / sampled time) and `.peak` (highest sample); in total
    `energy_j`; and, when given, `work_metric`: joules per unit of work (`per_joule=False`, e.g. train.joules_per_token) or
    units of work per joule (`per_joule=True`, e.g. inference.output_tokens_per_joule)."""
    if not trace.usable():
        result.details["energy"] = {"skipped": trace.skipped_reason or "fewer than two power samples were taken",
                                    "sensor_errors": trace.errors}
        return
    total_j = 0.0
    series = []
    for channel in trace.channels:
        xs, ys = trace.series(channel)
        energy = trace.energy_j(channel)
        total_j += energy
        result.add_metric(f"power_w.{channel}.avg", energy / (xs[-1] - xs[0]), "W", None,
                          "average power = ∫P dt / sampled time")
        result.add_metric(f"power_w.{channel}.peak", max(ys), "W", None, "highest power sample")
        series.append(Series(channel, xs, ys))
    result.add_metric("energy_j", total_j, "J", "lower", ENERGY_FORMULA)
    if work_metric and work > 0 and total_j > 0:
        if per_joule:
            result.add_metric(work_metric, work / total_j, f"{work_unit}/J", "higher", f"{work_unit} / {ENERGY_FORMULA}")
        else:
            result.add_metric(work_metric, total_j / work, f"J/{work_unit}", "lower", f"{ENERGY_FORMULA} / {work_unit}")
    result.plots.append(Plot("Power draw", "time since the workload started (s)", "W", series))
    result.details["energy"] = {"sensors": trace.sensors, "samples": len(trace.t), "sensor_errors": trace.errors}
