"""gpu_health: readers over outputs written from the documented formats, and the verdict on each kind of fault.

Each case must produce the right verdict and a one-line reason. The NVML reader runs against an object with NVML's
documented functions and return shapes (a driver library cannot be loaded without a GPU); on a GPU machine the
`gpu` marked test reads the real one.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from dcforge.checks.gpu_health import GpuHealthCheck, GpuHealthConfig
from dcforge.harness.node import no_gpu_reason
from dcforge.gpu.dcgm import DcgmOutputError, parse_diag
from dcforge.gpu.kernel_log import parse_xid_lines
from dcforge.gpu.nvml import NvmlReader, throttle_reason_names
from dcforge.gpu.readings import (Clocks, DcgmDiag, EccCounts, GpuReading, NodeHealth, NvLinkState, PcieLink, RowRemaps,
                                  XidEvent)
from dcforge.gpu.verdict import judge_node, pci_device
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckSkipped
from dcforge.spec import load_environment

OUTPUTS = Path(__file__).parent / "gpu_outputs"
BUS_IDS = ["00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:3B:00.0"]


def healthy_gpu(index: int) -> GpuReading:
    """An idle H100 SXM as NVML reports it on a healthy HGX node."""
    return GpuReading(
        index=index, name="NVIDIA H100 80GB HBM3", pci_bus_id=BUS_IDS[index], uuid=f"GPU-{index}",
        ecc_enabled=True, ecc=EccCounts(aggregate_corrected=3), row_remaps=RowRemaps(corrected_rows=1),
        nvlinks=tuple(NvLinkState(link, True) for link in range(18)),
        pcie=PcieLink(generation=5, width=16, max_generation=5, max_width=16),
        clocks=Clocks(sm_mhz=345, max_sm_mhz=1980, throttle_reasons=("gpu_idle",)),
        temperature_c=31, slowdown_temperature_c=87, power_w=71, power_limit_w=700,
    )


def node(*gpus: GpuReading, xids=(), dcgm=None) -> NodeHealth:
    return NodeHealth(gpus=tuple(gpus) or tuple(healthy_gpu(i) for i in range(4)), xids=tuple(xids), dcgm=dcgm)


def healthy_node_with(index: int, **changes) -> NodeHealth:
    return node(*(replace(healthy_gpu(i), **changes) if i == index else healthy_gpu(i) for i in range(4)))


def test_healthy_node_passes():
    verdict = judge_node(node(dcgm=parse_diag(json.loads((OUTPUTS / "dcgm3-diag-pass.json").read_text()), 2)))
    assert verdict.passed and verdict.reason == "" and verdict.findings == ()


def test_volatile_uncorrectable_ecc_fails_lifetime_only_warns():
    verdict = judge_node(healthy_node_with(2, ecc=EccCounts(volatile_dram_uncorrected=2, aggregate_dram_uncorrected=2)))
    assert not verdict.passed
    assert verdict.reason == "GPU 2: 2 uncorrectable ECC errors since the driver loaded (SRAM 0, DRAM 2)"
    lifetime = judge_node(healthy_node_with(1, ecc=EccCounts(aggregate_sram_uncorrected=1)))
    assert lifetime.passed and [str(w) for w in lifetime.warnings] == [
        "GPU 1: 1 uncorrectable ECC errors in the GPU's lifetime (SRAM 1, DRAM 0)"]


def test_pending_row_remap_fails():
    verdict = judge_node(healthy_node_with(3, row_remaps=RowRemaps(uncorrected_rows=1, pending=True)))
    assert not verdict.passed and verdict.reason == "GPU 3: a row remap is pending: reset the GPU to apply it"


def test_failed_row_remap_fails():
    verdict = judge_node(healthy_node_with(0, row_remaps=RowRemaps(uncorrected_rows=512, failed=True)))
    assert not verdict.passed and verdict.reason == "GPU 0: a row remap failed (no spare rows left): replace the GPU"


def test_fatal_xid_in_kmsg_fails_the_gpu_on_its_pci_address():
    xids = parse_xid_lines((OUTPUTS / "kmsg-xid79.txt").read_text())
    assert xids == [XidEvent(79, "0000:3b:00", "pid=0, GPU has fallen off the bus.", "kernel log")]
    verdict = judge_node(node(xids=xids))
    assert not verdict.passed
    assert verdict.reason == ("GPU 3: XID 79 (GPU has fallen off the bus) in the kernel log: reboot node "
                              "(catalogue bucket RESTART_BM)")


def test_fatal_xid_from_nvml_and_kernel_log_counts_once():
    nvml_event = XidEvent(48, "00000000:2A:00.0", "", "nvml")
    log_event = XidEvent(48, "0000:2a:00", "pid=1, DBE", "kernel log")
    verdict = judge_node(node(xids=[nvml_event, log_event]))
    assert verdict.reason == ("GPU 1: XID 48 (Double Bit ECC Error) in NVML events: reset GPU "
                              "(catalogue bucket WORKFLOW_XID_48)")
    assert len(verdict.failures) == 1


def test_non_fatal_xid_in_dmesg_only_warns():
    xids = parse_xid_lines((OUTPUTS / "dmesg-xid13.txt").read_text())
    assert [x.xid for x in xids] == [13, 13]
    verdict = judge_node(node(xids=xids))
    assert verdict.passed and [str(w) for w in verdict.warnings] == [
        "GPU 0: XID 13 (Graphics Engine Exception) in the kernel log: restart workload (catalogue bucket RESTART_APP)"]


def test_nvlink_down_fails():
    links = tuple(NvLinkState(link, link not in (4, 11), replay_errors=2 if link == 4 else 0) for link in range(18))
    verdict = judge_node(healthy_node_with(1, nvlinks=links))
    assert not verdict.passed and verdict.reason == "GPU 1: NVLink 4, 11 down (16/18 up)"
    assert [str(w) for w in verdict.warnings] == ["GPU 1: NVLink errors: 2 replay"]


def test_pcie_width_fails_generation_only_warns():
    narrow = judge_node(healthy_node_with(0, pcie=PcieLink(5, 8, 5, 16)))
    assert narrow.reason == "GPU 0: PCIe link x8, below its maximum x16"
    idle = judge_node(healthy_node_with(0, pcie=PcieLink(1, 16, 5, 16)))
    assert idle.passed and len(idle.warnings) == 1


def test_hardware_throttling_and_heat_fail():
    hot = judge_node(healthy_node_with(2, clocks=Clocks(900, 1980, ("hw_thermal_slowdown", "sw_power_cap")),
                                       temperature_c=88))
    assert hot.reason == ("GPU 2: clocks throttled by hw_thermal_slowdown (900 of 1980 MHz); "
                          "GPU 2: 88 °C, at or above the slowdown threshold 87 °C")


def test_dcgm3_memory_failure_fails_and_warn_warns():
    diag = parse_diag(json.loads((OUTPUTS / "dcgm3-diag-memory-fail.json").read_text()), 2)
    assert diag.version == "3.3.9" and {(r.test, r.gpu, r.status) for r in diag.results} >= {
        ("GPU Memory", 1, "fail"), ("PCIe", 0, "warn"), ("Denylist", None, "pass")}
    verdict = judge_node(node(dcgm=diag))
    assert not verdict.passed
    assert verdict.reason == ("GPU 1: DCGM diag level 2 GPU Memory failed: Pending page retirements found on GPU 1. "
                              "Drain the GPU and reset it or reboot the node.")
    assert [str(w) for w in verdict.warnings] == ["GPU 0: DCGM diag level 2 PCIe warned: GPU 0 PCIe replay count 12 "
                                                  "above 8"]


def test_dcgm4_failure_and_skips():
    diag = parse_diag(json.loads((OUTPUTS / "dcgm4-diag-fail.json").read_text()), 2)
    assert diag.version == "4.2.3"
    assert [r.status for r in diag.results if r.test == "pcie"] == ["skip", "skip"]
    verdict = judge_node(node(dcgm=diag))
    assert verdict.reason == ("GPU 1: DCGM diag level 2 memory failed: Error using CUDA API cudaMalloc on GPU 1: "
                              "out of memory")


def test_dcgm_output_without_results_is_an_error_not_a_pass():
    with pytest.raises(DcgmOutputError, match="no 'DCGM Diagnostic.test_categories'"):
        parse_diag({"error": "Unable to connect to host engine"}, 2)


def test_several_failures_stay_on_one_line():
    verdict = judge_node(node(healthy_gpu(0), replace(healthy_gpu(1), row_remaps=RowRemaps(pending=True)),
                              xids=[XidEvent(79, "0000:18:00")]))
    assert "\n" not in verdict.reason and verdict.reason.count(";") == 1


class FakeNvml(SimpleNamespace):
    """NVML's documented functions and constants (nvml.h / pynvml) returning what a healthy H100 with one
    pending row remap and NVLink 7 down reports."""

    class NVMLError(Exception):
        pass

    NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
    NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC = 0, 1
    NVML_MEMORY_LOCATION_DRAM, NVML_MEMORY_LOCATION_SRAM = 2, 7
    NVML_NVLINK_MAX_LINKS = 18
    NVML_FEATURE_DISABLED, NVML_FEATURE_ENABLED = 0, 1
    NVML_NVLINK_ERROR_DL_REPLAY, NVML_NVLINK_ERROR_DL_RECOVERY = 0, 1
    NVML_NVLINK_ERROR_DL_CRC_FLIT, NVML_NVLINK_ERROR_DL_CRC_DATA = 2, 3
    NVML_TEMPERATURE_GPU, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 0, 1
    NVML_CLOCK_SM = 1
    NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS, NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 0, 1

    def not_supported(self, *args):
        raise self.NVMLError("Not Supported")

    def __init__(self):
        super().__init__()
        self.nvmlDeviceGetCount = lambda: 1
        self.nvmlDeviceGetHandleByIndex = lambda index: ("handle", index)
        self.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"
        self.nvmlDeviceGetPciInfo = lambda h: SimpleNamespace(busId=b"00000000:18:00.0")
        self.nvmlDeviceGetUUID = lambda h: "GPU-5f0e"
        self.nvmlDeviceGetEccMode = lambda h: [1, 1]
        self.nvmlDeviceGetMemoryErrorCounter = lambda h, kind, counter, location: 0
        self.nvmlDeviceGetTotalEccErrors = lambda h, kind, counter: 4 if counter == self.NVML_AGGREGATE_ECC else 0
        self.nvmlDeviceGetRemappedRows = lambda h: (2, 1, 1, 0)
        self.nvmlDeviceGetRetiredPagesPendingStatus = self.not_supported  # Hopper remaps rows instead
        self.nvmlDeviceGetNvLinkState = lambda h, link: \
            self.NVML_FEATURE_DISABLED if link == 7 else self.NVML_FEATURE_ENABLED
        self.nvmlDeviceGetNvLinkErrorCounter = lambda h, link, counter: 0
        self.nvmlDeviceGetCurrPcieLinkGeneration = lambda h: 5
        self.nvmlDeviceGetCurrPcieLinkWidth = lambda h: 16
        self.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: 5
        self.nvmlDeviceGetMaxPcieLinkWidth = lambda h: 16
        self.nvmlDeviceGetClockInfo = lambda h, clock: 1980
        self.nvmlDeviceGetMaxClockInfo = lambda h, clock: 1980
        self.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x4  # software power cap: normal under load
        self.nvmlDeviceGetTemperature = lambda h, sensor: 64
        self.nvmlDeviceGetTemperatureThreshold = lambda h, threshold: 87
        self.nvmlDeviceGetPowerUsage = lambda h: 689_000
        self.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000


def test_nvml_reader_builds_the_reading_and_the_verdict_names_both_faults():
    reading = NvmlReader(FakeNvml()).read(0)
    assert reading.pci_bus_id == "00000000:18:00.0" and reading.ecc == EccCounts(aggregate_corrected=4)
    assert reading.row_remaps == RowRemaps(2, 1, True, False) and reading.retired_pages is None
    assert len(reading.nvlinks) == 18 and [l.link for l in reading.nvlinks if not l.active] == [7]
    assert reading.clocks.throttle_reasons == ("sw_power_cap",) and reading.power_w == 689.0
    verdict = judge_node(NodeHealth(gpus=(reading,)))
    assert verdict.reason == "GPU 0: a row remap is pending: reset the GPU to apply it; GPU 0: NVLink 7 down (17/18 up)"


def test_throttle_reason_bits():
    assert throttle_reason_names(0x1 | 0x40 | 0x80) == ("gpu_idle", "hw_thermal_slowdown", "hw_power_brake_slowdown")


def test_pci_device_forms_agree():
    assert pci_device("00000000:3B:00.0") == pci_device("0000:3b:00") == pci_device("3b:00") == "0000:3b:00"


def run_check(check, config, tmp_path, env="prod"):
    ctx = CheckContext(env=load_environment(env), report_dir=tmp_path, deadline=time.monotonic() + 300,
                       log=lambda line: None)
    return check.run(ctx, config)


@pytest.mark.skipif(no_gpu_reason() is None, reason="a GPU is visible: the no-GPU paths do not apply")
def test_gpu_checks_without_gpus_skip_only_where_none_is_declared(tmp_path):
    """`local` declares no GPU pool: no GPU visible is a skip. `prod` declares 8 H100s per node: the same machine
    fails both GPU checks with declared and visible counts and the recommended action, never a skip or a pass."""
    from dcforge.checks.gpu_bandwidth import GpuBandwidthCheck, GpuBandwidthConfig
    from dcforge.harness.result import Status

    with pytest.raises(CheckSkipped, match="no GPU visible"):
        run_check(GpuHealthCheck(), GpuHealthConfig(), tmp_path, env="local")
    with pytest.raises(CheckSkipped, match="no GPU visible .*no GPU bandwidth to measure"):
        run_check(GpuBandwidthCheck(), GpuBandwidthConfig(), tmp_path, env="local")
    shortfall = ("pool 'train-a' declares 8 H100-SXM per node and 0 are visible on this machine (driver not loaded "
                 "or GPUs off the bus); recommended action: reboot node")
    health = run_check(GpuHealthCheck(), GpuHealthConfig(stage="deploy"), tmp_path)
    assert health.status == Status.FAIL and health.reason.startswith(shortfall), health.reason
    assert health.details["gpu_count"] == {"declared": 8, "visible": 0}
    assert health.details["findings"][0]["action"] == "reboot_node"
    assert health.details["action"] == "reboot_node"  # the node's one action counts the shortfall too
    assert health.metrics["gpus_checked"].value == 0  # the readers still ran
    bandwidth = run_check(GpuBandwidthCheck(), GpuBandwidthConfig(), tmp_path)
    assert bandwidth.status == Status.FAIL and bandwidth.reason == shortfall and not bandwidth.metrics


@pytest.mark.gpu
@pytest.mark.skipif(no_gpu_reason() is not None, reason=str(no_gpu_reason()))
def test_gpu_health_on_this_machines_gpus(tmp_path):
    result = run_check(GpuHealthCheck(), GpuHealthConfig(stage="deploy"), tmp_path, env="local")
    assert result.metrics["gpus_checked"].value >= 1
    assert result.status.value in ("pass", "fail") and (result.status.value == "pass") == (result.reason == "")


def test_kernel_log_is_read_from_this_machine_or_says_why_not():
    from dcforge.gpu.kernel_log import kernel_log_xids, read_kmsg

    events, unreadable = kernel_log_xids()
    if unreadable is not None:
        assert unreadable.startswith("kernel log unreadable (/dev/kmsg: ") and events == []
        return
    records = read_kmsg().splitlines()
    assert records and all(";" in line.split(" ", 1)[0] or line.startswith(" ") for line in records[:20])
    assert all(event.source == "kernel log" for event in events)


def test_bandwidth_measurements_become_metrics_judged_by_the_h100_profile():
    from dcforge.checks.gpu_bandwidth import GpuBandwidthCheck, measurements_result
    from dcforge.harness.result import CheckResult
    from dcforge.harness.slo import acceptance_slos, evaluate

    measured = json.loads((OUTPUTS / "bandwidth-2gpu.json").read_text())
    result = measurements_result(CheckResult("gpu_bandwidth", declared=GpuBandwidthCheck.metrics), measured)
    values = {key: metric.value for key, metric in result.metrics.items()}
    assert values["h2d_gbps"] == 50.2 and values["d2h_gbps"] == 53.7
    assert values["p2p_gbps"] == 301.0 and values["p2p_gbps.max"] == 362.5 and values["gemm_tflops"] == 688.0
    assert values["gemm_fraction_of_peak"] == pytest.approx(688e12 / 989e12)
    assert result.status.value == "pass" and "268435456 bytes × 20" in result.metrics["h2d_gbps"].formula
    slos, _ = acceptance_slos(load_environment("prod"))
    verdicts = {slo.metric: evaluate(slo, {"gpu_bandwidth": result}) for slo in slos
                if slo.check == "gpu_bandwidth"}
    assert {m: v.verdict for m, v in verdicts.items()} == {
        "gpu_bandwidth.h2d_gbps": "pass", "gpu_bandwidth.d2h_gbps": "pass", "gpu_bandwidth.p2p_gbps": "fail",
        "gpu_bandwidth.gemm_fraction_of_peak": "pass"}
    assert verdicts["gpu_bandwidth.p2p_gbps"].reason == "301 GB/s is not >= 335"
    assert verdicts["gpu_bandwidth.p2p_gbps"].source.startswith("profile h100-sxm-8gpu-nvlink-ib400")


def test_pairs_without_peer_access_fail_bandwidth():
    from dcforge.checks.gpu_bandwidth import GpuBandwidthCheck, measurements_result
    from dcforge.harness.result import CheckResult

    measured = json.loads((OUTPUTS / "bandwidth-2gpu.json").read_text())
    measured["device_device"][1]["peer_access"] = False
    result = measurements_result(CheckResult("gpu_bandwidth", declared=GpuBandwidthCheck.metrics), measured)
    assert result.status.value == "fail"
    assert result.reason == "no peer access between GPUs 1→0: device copies go through the host"


def test_health_result_metrics_and_verdict():
    from dcforge.checks.gpu_health import health_result
    from dcforge.harness.result import CheckResult

    def judged(health):
        return health_result(CheckResult("gpu_health", declared=GpuHealthCheck.metrics), health)

    healthy = judged(node(dcgm=DcgmDiag(level=2)))
    assert healthy.status.value == "pass" and healthy.reason == ""
    assert {k: m.value for k, m in healthy.metrics.items()} == {
        "gpus_checked": 4, "gpus_failing": 0, "fatal_xids": 0, "ecc_uncorrected_volatile": 0,
        "row_remaps_pending": 0, "row_remaps_failed": 0, "nvlinks_down": 0, "temperature_c.max": 31,
        "dcgm_failures": 0, "warnings": 0}
    xids = parse_xid_lines((OUTPUTS / "kmsg-xid79.txt").read_text()) + [XidEvent(79, "00000000:3B:00.0", "", "nvml")]
    broken = judged(NodeHealth(gpus=tuple(replace(healthy_gpu(i), row_remaps=RowRemaps(pending=i == 1))
                                          for i in range(4)), xids=tuple(xids),
                               dcgm=parse_diag(json.loads((OUTPUTS / "dcgm4-diag-fail.json").read_text()), 2)))
    assert broken.status.value == "fail"
    assert broken.reason == ("GPU 1: a row remap is pending: reset the GPU to apply it; GPU 3: XID 79 (GPU has "
                             "fallen off the bus) in the kernel log: reboot node (catalogue bucket RESTART_BM); "
                             "GPU 1: DCGM diag level 2 memory failed: Error using CUDA API cudaMalloc on GPU 1: out of "
                             "memory")
    # the node's one action (docs/verdicts.md#node-action): the most urgent of its findings'
    assert healthy.details["action"] == "none" and broken.details["action"] == "drain_and_service"
    assert {(f["severity"], f["action"]) for f in broken.details["findings"]} == {
        ("fail", "reset_gpu"), ("fail", "reboot_node"), ("fail", "drain_and_service")}
    values = {k: m.value for k, m in broken.metrics.items()}
    assert (values["gpus_failing"], values["fatal_xids"], values["row_remaps_pending"], values["dcgm_failures"]) == \
        (2, 1, 1, 1)
    assert broken.metrics["dcgm_failures"].formula.endswith("(level 2)")


def test_a_nodes_readings_survive_the_trip_through_a_pod_log():
    """On target kubernetes a node's NodeHealth travels as JSON in a GpuHealthResult record: it comes back equal,
    nested readings, XIDs and DCGM results included."""
    import dataclasses

    from dcforge.gpu.readings import XidEvent, node_health_from_dict
    from workloads.records import GpuHealthResult, read_result

    diag = parse_diag(json.loads((OUTPUTS / "dcgm3-diag-pass.json").read_text()), 2)
    health = node(xids=[XidEvent(79, BUS_IDS[1], "fallen off the bus", "nvml")], dcgm=diag)
    health = dataclasses.replace(health, notes=("kernel log not readable",))
    line = GpuHealthResult(hostname="gpu-node-a", dcgm_level=2, health=dataclasses.asdict(health)).to_json()
    record = read_result([line], GpuHealthResult)
    assert node_health_from_dict(json.loads(json.dumps(record.health))) == health
