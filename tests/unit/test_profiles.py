"""Threshold profiles: the shipped ones are complete, `profile: auto` fills default SLOs that explicit SLOs
override, the report says where each threshold came from, and a malformed profile is exit 2 naming file and key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcforge.checks import CATALOG
from dcforge.errors import DcforgeError
from dcforge.harness.slo import acceptance_slos
from dcforge.paths import REPO_ROOT
from dcforge.spec import load_environment
from dcforge.spec.profiles import builtin_profiles, load_profile_file



def dcforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcforge.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_shipped_profiles_cover_five_skus_with_provenance():
    profiles = builtin_profiles()
    assert {p.gpu_model for p in profiles.values()} >= {"H100-SXM", "H200-SXM", "A100-SXM4-80GB", "L40S", "B200"}
    for profile in profiles.values():
        for key, threshold in profile.thresholds.items():
            assert threshold.source and threshold.status in ("provisional", "calibrated"), (profile.name, key)
            assert 0 <= threshold.tolerance < 1
    h100 = profiles["h100-sxm-8gpu-nvlink-ib400"].thresholds
    assert h100["allreduce.busbw_gbps"].expression == ">= 460" and "16G" in h100["allreduce.busbw_gbps"].source
    assert profiles["l40s-pcie-8gpu-eth"].thresholds["gpu_bandwidth.h2d_gbps"].expression == ">= 22.5"  # 25·(1−0.1)


def test_auto_profile_fills_defaults_and_explicit_slos_win():
    slos, how = acceptance_slos(load_environment("prod"))
    assert how == "auto: h100-sxm-8gpu-nvlink-ib400 for 8 x H100-SXM"
    by_metric = {slo.metric: slo for slo in slos}
    # prod sets allreduce.busbw_gbps itself (at 1 GiB): the file wins over the profile's 16 GiB figure
    assert by_metric["allreduce.busbw_gbps"].threshold == 350 and by_metric["allreduce.busbw_gbps"].source == \
        "environment file"
    h2d = by_metric["gpu_bandwidth.h2d_gbps"]
    assert (h2d.op, h2d.threshold) == (">=", 48)
    assert h2d.source.startswith("profile h100-sxm-8gpu-nvlink-ib400 (provisional, value 48 GB/s, tolerance 0)")
    assert "azurehpc-health-checks" in h2d.source


def test_profile_thresholds_skip_checks_that_do_not_run(env_file):
    path = env_file("prod", replace={"checks: [system, gpu_health, gpu_bandwidth, train,": "checks: [system, train,"})
    slos, _ = acceptance_slos(load_environment(path=path))
    assert not [slo for slo in slos if slo.metric.startswith("gpu_bandwidth.")]


def test_named_profile_and_no_profile(env_file):
    named = env_file("local", replace={
        "  dcforge:acceptance:\n": "  dcforge:acceptance:\n    profile: l40s-pcie-8gpu-eth\n"})
    slos, how = acceptance_slos(load_environment(path=named))
    assert how == "profile l40s-pcie-8gpu-eth"
    # local runs no gpu_bandwidth check, so none of the L40S profile's thresholds become SLOs
    assert [slo for slo in slos if slo.source != "environment file"] == []
    _, how = acceptance_slos(load_environment("local"))
    assert how == "no profile (dcforge:acceptance.profile not set)"


def write_profile(tmp_path: Path, edit) -> Path:
    document = yaml.safe_load((REPO_ROOT / "dcforge/spec/data/profiles/h100-sxm-8gpu-nvlink-ib400.yaml").read_text())
    edit(document)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("edit, key, words", [
    (lambda d: d["thresholds"]["gpu_bandwidth.h2d_gbps"].pop("source"), "thresholds.gpu_bandwidth.h2d_gbps.source",
     "required key is missing"),
    (lambda d: d["thresholds"]["gpu_bandwidth.h2d_gbps"].update(tolerance=1.5),
     "thresholds.gpu_bandwidth.h2d_gbps.tolerance", "less than 1"),
    (lambda d: d["thresholds"]["gpu_bandwidth.h2d_gbps"].update(status="guessed"),
     "thresholds.gpu_bandwidth.h2d_gbps.status", "'provisional' or 'calibrated'"),
    (lambda d: d["thresholds"].update({"warp.speed": d["thresholds"]["gpu_bandwidth.h2d_gbps"]}),
     "thresholds.warp.speed", "unknown check 'warp'"),
    (lambda d: d["thresholds"].update({"nodot": d["thresholds"]["gpu_bandwidth.h2d_gbps"]}), "thresholds",
     "must be '<check>.<metric>[.<stat>]'"),
    (lambda d: d.update(gpuModel="H300"), "gpuModel", "unknown GPU model"),
])
def test_malformed_profile_is_exit_2_naming_file_and_key(tmp_path, env_file, edit, key, words):
    write_profile(tmp_path, edit)
    env = env_file("local", replace={"  dcforge:acceptance:\n": "  dcforge:acceptance:\n    profile: mine.yaml\n"})
    with pytest.raises(DcforgeError) as error:
        load_environment(path=env, checks=CATALOG)
    assert f"mine.yaml: {key}: " in str(error.value) and words in str(error.value), str(error.value)
    proc = dcforge("validate", "--env-file", str(env), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: mine.yaml: ") and key in lines[0], proc.stderr


def test_unknown_profile_name_is_exit_2(tmp_path, env_file):
    env = env_file("local", replace={"  dcforge:acceptance:\n": "  dcforge:acceptance:\n    profile: h900\n"})
    proc = dcforge("validate", "--env-file", str(env), cwd=tmp_path)
    assert proc.returncode == 2 and "dcforge:acceptance.profile: unknown profile 'h900'" in proc.stderr


def test_profile_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nthresholds: [\n")
    with pytest.raises(DcforgeError, match=r"broken.yaml:\d+: YAML syntax error"):
        load_profile_file(path, "broken.yaml")


@pytest.mark.slow
def test_accept_prod_on_cpu_fails_gpu_checks_with_the_shortfall_and_reports_threshold_sources(tmp_path):
    from dcforge.harness.node import no_gpu_reason

    if no_gpu_reason() is None:
        pytest.skip("a GPU is visible: the CPU skip path does not apply")
    proc = dcforge("accept", "--env", "prod", "--only", "system,gpu_health,gpu_bandwidth", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # system fails: prod declares 8 H100s per node
    (directory,) = (tmp_path / "reports" / "prod").iterdir()
    report = json.loads((directory / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("gpu_health", "gpu_bandwidth"):  # declared but not visible: a failing finding, never a skip
        assert checks[name]["status"] == "fail"
        assert "declares 8 H100-SXM per node and 0 are visible" in checks[name]["reason"]
    assert report["metadata"]["profile"] == "auto: h100-sxm-8gpu-nvlink-ib400 for 8 x H100-SXM"
    h2d = next(s for s in report["slos"] if s["metric"] == "gpu_bandwidth.h2d_gbps")
    assert h2d["verdict"] == "error" and "the check failed: pool 'train-a' declares" in h2d["reason"]
    assert h2d["source"].startswith("profile h100-sxm-8gpu-nvlink-ib400")
    gpu_count = next(s for s in report["slos"] if s["metric"] == "system.gpu_count")
    assert gpu_count["source"] == "environment file"
    assert "threshold from" in (directory / "report.html").read_text()


def test_calibration_is_direction_aware_and_leaves_out_failed_runs():
    from dcforge.calibrate import Calibration, collect
    from dcforge.harness.metrics import MetricSpec
    from dcforge.harness.result import CheckResult, Status

    declared = (MetricSpec("bw", "GB/s", "higher", "bytes / t", "bandwidth"),
                MetricSpec("count", "n", None, "things counted", "inventory"))

    assert Calibration("a.bw", "higher", "GB/s", (10.0, 12.0, 14.0)).proposed(1) == (">=", 10.0)
    assert Calibration("a.ms", "lower", "ms", (10.0, 12.0, 14.0)).proposed(2) == ("<=", 16.0)
    assert Calibration("a.ms", "lower", "ms", (5.0,)).proposed(3) == ("<=", 5.0)  # one run: no spread
    good = CheckResult("a", declared=declared)
    good.add_metric("bw", 10)
    good.add_metric("count", 3)  # informational: never calibrated
    bad = CheckResult("a", Status.FAIL, reason="wrong sum", declared=declared)
    bad.add_metric("bw", 1)
    calibrations, left_out = collect([{"a": good}, {"a": bad}])
    assert calibrations == []
    assert left_out == ["run 2: a fail (wrong sum)", "a.bw: measured in 1 of 2 runs"]
