"""Power sampling: energy metrics from GPU readings made for the test, RAPL counters (wrap included) from a
powercap tree written by the test, and the skip reason where no sensor is exposed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dcforge.harness.power import (ENERGY_METRICS, JOULES_PER_TOKEN, OUTPUT_TOKENS_PER_JOULE, PowerSampler,
                                   PowerTrace, RaplSensor, discover_sensors, record_energy, sample_power)
from dcforge.harness.result import CheckResult


def result_of(check: str, *extra) -> CheckResult:
    return CheckResult(check, declared=(*ENERGY_METRICS, *extra))


class ScriptedGpuSensor:
    """A test double for NVML hardware: returns the next reading of a script on every read (the last one repeats)."""

    name = "nvml"

    def __init__(self, script: list[dict[str, float]]):
        self.script = list(script)
        self.closed = False

    def read(self) -> dict[str, float]:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def close(self) -> None:
        self.closed = True


def test_energy_metrics_from_gpu_readings():
    # two GPUs sampled at t = 0, 1, 2, 3 s: gpu0 ramps 100 -> 400 W, gpu1 holds 50 W
    trace = PowerTrace(sensors=["nvml"], t=[0.0, 1.0, 2.0, 3.0],
                       watts=[{"gpu0": 100.0, "gpu1": 50.0}, {"gpu0": 200.0, "gpu1": 50.0},
                              {"gpu0": 300.0, "gpu1": 50.0}, {"gpu0": 400.0, "gpu1": 50.0}])
    result = result_of("train", JOULES_PER_TOKEN)
    record_energy(result, trace, work=1500.0, work_metric=JOULES_PER_TOKEN)
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    channels = result.details["energy"]["channels"]
    assert channels["gpu0"]["avg_w"] == pytest.approx(250.0)  # (150 + 250 + 350) J / 3 s
    assert channels["gpu0"]["peak_w"] == 400.0
    assert channels["gpu1"]["avg_w"] == pytest.approx(50.0) and channels["gpu1"]["peak_w"] == 50.0
    assert metrics["gpu_power_w.avg"] == pytest.approx(150.0)  # mean of the GPUs' averages
    assert metrics["gpu_power_w.peak"] == 400.0
    assert "cpu_power_w.avg" not in metrics  # no CPU channel sampled
    assert metrics["energy_j"] == pytest.approx(750.0 + 150.0)
    assert metrics["joules_per_token"] == pytest.approx(900.0 / 1500.0)
    assert result.metrics["joules_per_token"].better == "lower"
    (plot,) = result.plots
    assert plot.title == "Power draw" and [s.name for s in plot.series] == ["gpu0", "gpu1"]

    inference = result_of("inference", OUTPUT_TOKENS_PER_JOULE)
    record_energy(inference, trace, work=450.0, work_metric=OUTPUT_TOKENS_PER_JOULE, per_joule=True)
    assert inference.metrics["output_tokens_per_joule"].value == pytest.approx(0.5)
    assert inference.metrics["output_tokens_per_joule"].better == "higher"


def test_sampler_thread_polls_a_sensor_while_the_workload_runs():
    sensor = ScriptedGpuSensor([{"gpu0": 300.0}, {"gpu0": 310.0}, {"gpu0": 320.0}])
    with sample_power(([sensor], []), interval_s=0.02) as trace:
        time.sleep(0.3)
    assert sensor.closed and len(trace.t) >= 5 and trace.t == sorted(trace.t)
    assert trace.t[-1] >= 0.3
    result = result_of("allreduce")
    record_energy(result, trace)
    assert result.metrics["gpu_power_w.peak"].value == 320.0
    assert 300.0 < result.metrics["gpu_power_w.avg"].value <= 320.0
    assert "joules_per_token" not in result.metrics


def test_a_failing_sensor_loses_samples_not_the_workload():
    class Broken(ScriptedGpuSensor):
        def read(self):
            raise OSError("GPU fell off the bus")

    sampler = PowerSampler([Broken([{}])], interval_s=0.01)
    sampler.start()
    time.sleep(0.05)
    trace = sampler.stop()
    result = result_of("train", JOULES_PER_TOKEN)
    record_energy(result, trace, work=10, work_metric=JOULES_PER_TOKEN)
    assert not result.metrics
    assert result.details["energy"]["skipped"] == "fewer than two power samples were taken"
    assert result.details["energy"]["sensor_errors"][0] == "nvml: GPU fell off the bus"


def write_rapl_zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone / "energy_uj"


def test_rapl_power_from_counter_deltas_including_the_wrap(tmp_path):
    package = write_rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, 10_000_000)
    write_rapl_zone(tmp_path, "intel-rapl:0:0", "core", 5, 10_000_000)  # a sub-zone: inside package-0, not added
    now = [100.0]
    sensor = RaplSensor(tmp_path, clock=lambda: now[0])
    package.write_text("4000000\n")  # +3 J in 0.5 s
    now[0] = 100.5
    assert sensor.read() == {"cpu-package-0": pytest.approx(6.0)}
    package.write_text("1000000\n")  # wrapped at 10 J: +6 J +1 J = 7 J in 1 s
    now[0] = 101.5
    assert sensor.read() == {"cpu-package-0": pytest.approx(7.0)}


def test_no_sensor_skips_energy_with_the_reason(tmp_path):
    with sample_power(([], ["NVML: NVML Shared Library Not Found", f"RAPL: no RAPL package zone under {tmp_path}"])) \
            as trace:
        pass
    result = result_of("train", JOULES_PER_TOKEN)
    record_energy(result, trace, work=1000, work_metric=JOULES_PER_TOKEN)
    assert not result.metrics and not result.plots  # never zero, never estimated
    assert result.details["energy"]["skipped"] == ("no power sensor exposed: NVML: NVML Shared Library Not Found; "
                                                   f"RAPL: no RAPL package zone under {tmp_path}")


def test_this_machine_without_sensors_names_both_missing_kinds(tmp_path):
    sensors, missing = discover_sensors(rapl_root=tmp_path)  # an empty powercap tree: no RAPL here
    for sensor in sensors:
        sensor.close()
    if sensors:
        pytest.skip("this machine exposes NVML")
    assert [line.split(":")[0] for line in missing] == ["NVML", "RAPL"]
