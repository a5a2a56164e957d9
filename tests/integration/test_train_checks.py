"""The four torch checks, run as the runner runs them, with the local environment's own settings."""

from __future__ import annotations

import time

import pytest

from dcforge.checks import check_config_model, load_check
from dcforge.harness.check import CheckContext
from dcforge.harness.result import Status
from dcforge.spec.loader import load_environment
from tests.integration.energy_support import assert_energy
from tests.integration.test_train_workloads import processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def env():
    return load_environment("local")


def _run(name: str, env, tmp_path):
    acceptance = env.spec.acceptance
    limit = acceptance.timeouts_s.get(name, acceptance.default_timeout_s)  # what the runner would give the check
    ctx = CheckContext(env=env, report_dir=tmp_path, deadline=time.monotonic() + limit)
    settings = env.spec.acceptance.settings.get(name, {})
    result = load_check(name).run(ctx, check_config_model(name).model_validate(settings))
    assert processes_mentioning(str(tmp_path)) == [], "a torchrun child outlived its check"
    for artefact in result.artefacts.values():
        assert (tmp_path / artefact).is_file()
    return result, ctx


def test_train_check(env, tmp_path):
    result, ctx = _run("train", env, tmp_path)
    assert result.status == Status.PASS, result.reason
    assert result.metrics["loss_end"].value < result.metrics["loss_start"].value
    assert 0 < result.metrics["mfu"].value and result.metrics["tokens_per_s"].value > 0
    assert result.metrics["step_time_ms.p50"].value <= result.metrics["step_time_ms.p95"].value
    assert [plot.title for plot in result.plots][:2] == ["Training loss", "Training throughput"]
    assert_energy(result, "joules_per_token")
    assert len(result.plots[0].series[0].x) == env.spec.acceptance.settings["train"]["steps"]

    from workloads.checkpointing import load_for_inference

    model, config = load_for_inference(ctx.outputs.trained_checkpoint_dir)  # what the inference check would serve
    assert config.max_seq_len == env.spec.acceptance.settings["train"]["seqLen"]


def test_allreduce_check(env, tmp_path):
    result, _ = _run("allreduce", env, tmp_path)
    assert result.status == Status.PASS, result.reason
    assert result.metrics["sizes_incorrect"].value == 0 and result.metrics["busbw_gbps"].value > 0
    assert result.details["backend"] == "gloo" and result.plots[0].log_x
    assert result.details["sweep"][-1]["bytes"] == 64 * 2**20
    (run,) = result.details["nccl_transport"]["runs"]  # gloo: the transport is recorded, the RDMA rule skipped
    assert (run["host"], run["network"], run["rule"]["verdict"]) == ("local", "TCP", "skipped")
    assert_energy(result, "energy_j")


def test_checkpoint_check(env, tmp_path):
    result, _ = _run("checkpoint", env, tmp_path)
    assert result.status == Status.PASS, result.reason
    assert result.metrics["checksum_match"].value == 1 and result.metrics["corruption_detected"].value == 1
    assert result.metrics["save_gbps"].value > 0 and result.metrics["raw_write_gbps"].value > 0
    assert not (tmp_path / "artefacts" / "checkpoint" / "checkpoints").exists()  # scratch bytes removed


def test_train_failover_check(env, tmp_path):
    result, _ = _run("train_failover", env, tmp_path)
    assert result.status == Status.PASS, result.reason
    assert result.metrics["resumed_step"].value == 4 and result.metrics["steps_lost"].value == 3
    assert result.metrics["final_params_match"].value == 1
    assert result.metrics["time_to_resume_s"].value > 0
    plot = result.plots[0]
    assert {series.name for series in plot.series} == {"attempt 0", "attempt 1"}
    assert any("killed at step 7" in marker["label"] for marker in plot.markers)
