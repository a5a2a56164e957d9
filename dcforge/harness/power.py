"""Power sampling around a workload: NVML per GPU, RAPL (/sys/class/powercap) per CPU package.

A `PowerSensor` returns the power of each of its channels (`gpu0`, `cpu-package-0`, ...) in watts; a
`PowerSampler` polls every sensor from a background thread while a check's workload runs and keeps the trace.
Energy is the trapezoidal integral of each channel's samples over time. Where no sensor is exposed (no NVIDIA
driver, no readable RAPL counters: containers, VMs, most non-Intel CPUs) nothing is sampled and the energy
metrics are skipped with the reason: never zero, never estimated.

Checks use it in two lines:

    with sample_power(ctx) as power:
        run_the_workload()
    record_energy(result, power, work=tokens, work_metric=JOULES_PER_TOKEN)

and declare `*ENERGY_METRICS` (and the work metric) in their `metrics`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dcforge.harness.metrics import MetricSpec
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


ENERGY_METRICS = (
    MetricSpec("gpu_power_w", "W", None, "avg: mean over GPUs of ∫P dt / sampled time; peak: highest sample of any GPU "
               "(NVML board power)", "power the GPUs drew during the workload (per GPU in details.energy)",
               stats=("avg", "peak")),
    MetricSpec("cpu_power_w", "W", None, "avg: mean over CPU packages of ∫P dt / sampled time; peak: highest "
               "sample of any package (RAPL)", "power the CPU packages drew during the workload",
               stats=("avg", "peak")),
    MetricSpec("energy_j", "J", "lower", ENERGY_FORMULA, "energy the sampled devices used during the workload"),
)
"""Declared by every check that samples power (train, allreduce, inference); absent where no sensor exists."""
JOULES_PER_TOKEN = MetricSpec("joules_per_token", "J/token", "lower",
                              f"{ENERGY_FORMULA} over the whole torchrun / tokens trained",
                              "training energy per token (where GPU or CPU power sensors exist)")
OUTPUT_TOKENS_PER_JOULE = MetricSpec("output_tokens_per_joule", "tokens/J", "higher",
                                     f"output tokens of successful requests / {ENERGY_FORMULA} over the load run",
                                     "serving energy efficiency (where GPU or CPU power sensors exist)")


def record_energy(result: CheckResult, trace: PowerTrace, *, work: float = 0.0,
                  work_metric: MetricSpec | None = None, per_joule: bool = False) -> None:
    """Add the energy metrics of one workload to `result` (see ENERGY_METRICS), or record why they are skipped.

    Per channel (`gpu0`, `cpu-package-0`): average and peak W in `details.energy.channels` and a "Power draw"
    plot; `work_metric` (declared by the check): joules per unit of work, or with `per_joule` units per joule."""
    if not trace.usable():
        result.details["energy"] = {"skipped": trace.skipped_reason or "fewer than two power samples were taken",
                                    "sensor_errors": trace.errors}
        return
    channels: dict[str, dict[str, float]] = {}
    series = []
    for channel in trace.channels:
        xs, ys = trace.series(channel)
        energy = trace.energy_j(channel)
        channels[channel] = {"avg_w": energy / (xs[-1] - xs[0]), "peak_w": max(ys), "energy_j": energy}
        series.append(Series(channel, xs, ys))
    for prefix, metric in (("gpu", "gpu_power_w"), ("cpu", "cpu_power_w")):
        group = [figures for name, figures in channels.items() if name.startswith(prefix)]
        if group:
            result.add_metric(f"{metric}.avg", sum(f["avg_w"] for f in group) / len(group))
            result.add_metric(f"{metric}.peak", max(f["peak_w"] for f in group))
    total_j = sum(f["energy_j"] for f in channels.values())
    result.add_metric("energy_j", total_j)
    if work_metric is not None and work > 0 and total_j > 0:
        result.add_metric(work_metric.name, work / total_j if per_joule else total_j / work)
    result.plots.append(Plot("Power draw", "time since the workload started (s)", "W", series))
    result.details["energy"] = {"sensors": trace.sensors, "samples": len(trace.t), "channels": channels,
                                "sensor_errors": trace.errors}
