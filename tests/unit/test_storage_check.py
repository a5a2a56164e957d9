"""The storage check's parts with the real fio on temporary directories (small sizes), and its Kubernetes
manifests against the Kubernetes schema. Skipped, with the reason, where fio is not installed."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from dcforge.checks import CATALOG
from dcforge.steps.fio import FioJob, FioVerifyFailed, parse_fio_json, run_fio
from dcforge.checks.storage import (FIGURES, StorageCheck, StorageCheckConfig, StorageError, class_plan, figure_name,
                                    measure_class, prepare_directory, supports_direct_io)
from dcforge.errors import ConfigError, ConfigErrors
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckSkipped
from dcforge.spec import load_environment
from dcforge.spec.loader import REPO_ROOT

FIO = shutil.which("fio")
needs_fio = pytest.mark.skipif(FIO is None, reason="fio is not installed: `make system-deps` as root installs it")
SMALL = dict(file_size_mib=16, phase_seconds=0.5, clients=2, metadata_files=200, verify_size_mib=4)


def small_config(**overrides) -> StorageCheckConfig:
    return StorageCheckConfig(**{**SMALL, **overrides})


@needs_fio
def test_fio_json_is_parsed_into_typed_results(tmp_path):
    job = FioJob("seq-write", str(tmp_path), "write", "1M", "8M", filename="f.dat", end_fsync=True)
    completed = subprocess.run([FIO, *job.args()], capture_output=True, text=True, timeout=60, check=True)
    (result,) = parse_fio_json(completed.stdout)
    assert result.name == "seq-write" and result.error == 0
    assert result.write.io_bytes == 8 * 2**20 and result.write.total_ios == 8
    assert result.write.bw_bytes > 0 and result.read.io_bytes == 0 and result.sync_p99_ms is None


@needs_fio
def test_fsync_job_reports_sync_latency_percentiles(tmp_path):
    job = FioJob("fsync", str(tmp_path), "write", "4k", "64k", filename="s.dat", fsync=1)
    result = run_fio(job, timeout_s=60)
    # fio 3.33 counts one sync fewer than writes (16 writes of 4 KiB here, 15 syncs in its table)
    assert result.write.total_ios == 16 and result.sync_total >= 15
    assert result.sync_p99_ms is not None and result.sync_p99_ms > 0
    assert result.sync_lat_percentiles_ns["50.000000"] <= result.sync_lat_percentiles_ns["99.000000"]


@needs_fio
def test_every_figure_is_measured_and_nothing_is_left_behind(tmp_path):
    measured = measure_class("fast", tmp_path / "fast", small_config(), FIO, budget_s=120, log=lambda line: None)
    assert set(measured.figures) == {figure_name(figure) for figure in FIGURES}
    assert all(value > 0 for value in measured.figures.values()), measured.figures
    assert measured.figures["data_verified"] == 1.0 and measured.verify_failure is None
    assert measured.direct_io == supports_direct_io(tmp_path)
    assert measured.metadata is not None and measured.metadata.files > 0
    assert list((tmp_path / "fast").iterdir()) == []  # the scratch directory and every file in it are gone


@needs_fio
def test_buffered_io_when_direct_io_is_off(tmp_path):
    measured = measure_class("slow", tmp_path / "slow", small_config(direct_io="off"), FIO, budget_s=120,
                             log=lambda line: None)
    assert measured.direct_io is False and measured.figures["data_verified"] == 1.0
    assert all(value > 0 for value in measured.figures.values()), measured.figures
    plan = class_plan(str(tmp_path), 16 * 2**20, False, small_config())
    assert {plan.rand_read.ioengine, plan.seq_write.ioengine} == {"psync"} and plan.rand_read.iodepth == 1


@needs_fio
def test_verify_pass_catches_a_block_altered_after_the_write(tmp_path):
    plan = class_plan(str(tmp_path), 16 * 2**20, supports_direct_io(tmp_path), small_config())
    run_fio(plan.verify_write, timeout_s=60)
    run_fio(plan.verify_read, timeout_s=60)  # intact: the verify-only pass succeeds
    victim = tmp_path / "verify.dat"
    with open(victim, "r+b") as handle:  # flip bytes in the middle of the third block, as a faulty store would
        handle.seek(2 * 2**20 + 4096)
        data = handle.read(64)
        handle.seek(2 * 2**20 + 4096)
        handle.write(bytes(b ^ 0xFF for b in data))
    with pytest.raises(FioVerifyFailed, match="verify failed at file .*verify.dat"):
        run_fio(plan.verify_read, timeout_s=60)


def local_context(tmp_path: Path, env=None) -> CheckContext:
    return CheckContext(env=env or load_environment("local"), report_dir=tmp_path / "report",
                        deadline=time.monotonic() + 120, log=lambda line: None)


def test_missing_fio_skips_with_the_reason_and_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # a PATH on which no fio exists
    with pytest.raises(CheckSkipped, match=r"fio is not installed.*apt-get install fio"):
        StorageCheck().run(local_context(tmp_path), small_config())


@needs_fio
def test_unwritable_path_is_one_line_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match=f"^{blocker}/class: not writable: Not a directory$"):
        prepare_directory(blocker / "class")
    config = small_config(paths={"local-checkpoints": str(blocker / "class")})
    with pytest.raises(StorageError, match=f"^class local-checkpoints: {blocker}/class: not writable"):
        StorageCheck().run(local_context(tmp_path), config)


@needs_fio
def test_too_little_free_space_is_one_line_naming_the_path(tmp_path):
    # A class whose free space allows less than the minimum file (here by the fraction we may use of it).
    with pytest.raises(StorageError, match=f"^{tmp_path}/fast: filesystem nearly full"):
        measure_class("fast", tmp_path / "fast", small_config(max_free_fraction=1e-9), FIO, budget_s=60)
    assert list((tmp_path / "fast").iterdir()) == []


def test_paths_for_undeclared_classes_and_relative_paths_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"dcforge:acceptance\.settings\.storage\.paths\.nope: unknown storage "
                                          r"class 'nope'; declared: local-checkpoints"):
        StorageCheck().run(local_context(tmp_path), small_config(paths={"nope": str(tmp_path)}))
    local = yaml.safe_load((REPO_ROOT / "stacks" / "Pulumi.local.yaml").read_text())
    local["config"]["dcforge:acceptance"]["settings"]["storage"] = {"paths": {"local-checkpoints": "relative/dir"},
                                                                   "clients": 0}
    env_file = tmp_path / "Pulumi.bad.yaml"
    env_file.write_text(yaml.safe_dump(local, sort_keys=False))
    with pytest.raises(ConfigErrors) as raised:
        load_environment(path=env_file, checks=CATALOG)
    keys = {error.key for error in raised.value.errors}
    assert {"dcforge:acceptance.settings.storage.paths", "dcforge:acceptance.settings.storage.clients"} <= keys
    # a class the environment does not declare is refused when the file is loaded, before anything runs
    local["config"]["dcforge:acceptance"]["settings"]["storage"] = {"paths": {"nope": "/mnt/x"}, "classes": ["typo"]}
    env_file = tmp_path / "Pulumi.bad.yaml"
    env_file.write_text(yaml.safe_dump(local, sort_keys=False))
    with pytest.raises(ConfigErrors) as raised:
        load_environment(path=env_file, checks=CATALOG)
    messages = {error.key: error.message for error in raised.value.errors}
    assert messages["dcforge:acceptance.settings.storage.paths.nope"].startswith("unknown storage class 'nope'")
    assert messages["dcforge:acceptance.settings.storage.classes"].startswith("unknown storage class 'typo'")


def test_the_kubernetes_image_setting_moved_to_the_acceptance_image(tmp_path):
    """The storage pods run in the acceptance image (which holds fio): the old `image` setting is refused naming
    where the image is set now."""
    prod = yaml.safe_load((REPO_ROOT / "stacks" / "Pulumi.prod.yaml").read_text())
    prod["config"]["dcforge:acceptance"]["settings"]["storage"] = {"image": "registry.example/fio:3.33"}
    env_file = tmp_path / "Pulumi.old.yaml"
    env_file.write_text(yaml.safe_dump(prod, sort_keys=False))
    with pytest.raises(ConfigErrors) as raised:
        load_environment(path=env_file, checks=CATALOG)
    (message,) = [e.message for e in raised.value.errors if e.key.startswith("dcforge:acceptance.settings.storage")]
    assert "set dcforge:acceptance.image" in message


def test_the_check_satisfies_the_check_protocol_the_runner_relies_on():
    from dcforge.harness.check import Check

    check = StorageCheck()
    assert isinstance(check, Check) and check.requires_declared_gpus is False and check.metrics == FIGURES
