"""checkpoint_backup end to end: a real training checkpoint backed up to a second directory and to a local
S3-compatible server (moto's server on a free loopback port), restored, verified, resumed from, and a corrupted
backup caught."""

from __future__ import annotations

import os
import sys
import time
import urllib.request

import pytest

from dcforge.checks import load_check
from dcforge.steps.serving.server import free_port
from dcforge.checks.checkpoint_backup import CheckpointBackupConfig
from dcforge.checks.train import TrainCheckConfig
from dcforge.harness.check import CheckContext
from dcforge.harness.processes import ManagedProcess
from dcforge.harness.result import Status
from dcforge.spec.loader import load_environment
from tests.integration.test_train_workloads import processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A train run of 4 steps: its checkpoint (step 4) is what gets backed up."""
    report_dir = tmp_path_factory.mktemp("trained")
    ctx = CheckContext(env=load_environment("local"), report_dir=report_dir, deadline=time.monotonic() + 240,
                       log=lambda line: None)
    result = load_check("train").run(ctx, TrainCheckConfig(steps=4, warmup_steps_excluded=1))
    assert result.status == Status.PASS, result.reason
    return ctx.outputs, result


def run_backup(tmp_path, trained, settings: dict):
    outputs, train_result = trained
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 200,
                       results={"train": train_result}, outputs=outputs, log=lambda line: None)
    result = load_check("checkpoint_backup").run(ctx, CheckpointBackupConfig.model_validate(settings))
    assert processes_mentioning(str(tmp_path)) == [], "the resume torchrun outlived the check"
    return result


def assert_round_trip(result) -> None:
    assert result.status == Status.PASS, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert metrics["files_match"] == 1 and metrics["tensor_checksums_match"] == 1
    assert metrics["resume_step"] == 4 and metrics["resume_step_matches"] == 1
    assert metrics["corruption_detected"] == 1
    assert metrics["copy_gbps"] > 0 and metrics["restore_gbps"] > 0 and metrics["backup_gb"] > 0


def test_backup_to_a_second_directory(tmp_path, trained):
    store = tmp_path / "second-volume"
    result = run_backup(tmp_path / "report", trained, {"directory": str(store), "keepBackup": True})
    assert_round_trip(result)
    kept = list(store.rglob("step_*"))
    assert len(kept) == 1 and (kept[0] / ".metadata").is_file()


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3-compatible server on 127.0.0.1, a bucket, and test-only credentials in this process."""
    port = free_port()
    server = ManagedProcess([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            log_path=tmp_path / "moto.log")
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="checkpoints")
        yield url
    finally:
        server.stop()
        for key, value in locals().get("saved", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_backup_to_a_local_s3_compatible_server(tmp_path, trained, s3_server):
    import boto3

    result = run_backup(tmp_path / "report", trained, {"target": "s3", "s3EndpointUrl": s3_server,
                                                       "s3Bucket": "checkpoints"})
    assert_round_trip(result)
    assert result.details["store"] == f"s3://checkpoints/dcforge-backups at {s3_server}"
    listed = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").list_objects_v2(Bucket="checkpoints")
    assert listed.get("KeyCount", 0) == 0  # removed after the check (keepBackup false)


def test_no_checkpoint_in_this_run_is_skipped(tmp_path):
    from dcforge.harness.result import CheckSkipped

    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 10)
    with pytest.raises(CheckSkipped, match="needs trained_checkpoint_dir from the 'train' check"):
        load_check("checkpoint_backup").run(ctx, CheckpointBackupConfig())
