"""Training config, data, schedule, all-reduce arithmetic and the checks' judgement, without processes."""

from __future__ import annotations

import time

import pytest
import torch
from pydantic import ValidationError

from dcforge.checks.allreduce import AllreduceCheckConfig
from dcforge.checks.train import TrainCheck, TrainCheckConfig, summarize
from dcforge.checks.train_failover import TrainFailoverCheck, TrainFailoverConfig, judge_recovery
from dcforge.errors import ConfigError
from dcforge.harness.check import CheckContext
from dcforge.harness.result import CheckResult, Status
from dcforge.spec.loader import load_environment
from workloads.allreduce import bus_bandwidth_factor, message_sizes, parse_size
from workloads.records import TrainCheckpointSaved, TrainFault, TrainStart, TrainStep
from workloads.train import lr_factor
from workloads.train_config import TrainConfig, TrainConfigError, field_docs, parse_args
from workloads.train_data import SyntheticBigramData, rank_slice


def test_every_train_option_is_documented_and_round_trips_through_the_command_line():
    import dataclasses

    assert set(field_docs(TrainConfig)) == {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(preset="125m", steps=7, resume=False, checkpoint_dir="/x", peak_flops=1e12)
    assert parse_args(config.to_args()) == config


@pytest.mark.parametrize("changes, world, field, message", [
    ({"preset": "giant"}, 1, "preset", "unknown model preset 'giant'; known presets: tiny"),
    ({"global_batch_size": 3}, 2, "global_batch_size", "global_batch_size 3 is not divisible by the world size 2"),
    ({"seq_len": 4096}, 1, "seq_len", "seq_len 4096 must be between 1 and the preset's max_seq_len 256"),
    ({"checkpoint_every": 2}, 1, "checkpoint_dir", "checkpoint_dir is not"),
    ({"keep_checkpoints": 0}, 1, "keep_checkpoints", "keep_checkpoints must be >= 1"),
    ({"fail_at_step": 3, "fail_rank": 2}, 2, "fail_rank", "fail_rank 2 is not a rank"),
])
def test_bad_training_settings_are_refused_naming_their_field(changes, world, field, message):
    with pytest.raises(TrainConfigError, match=message) as caught:
        TrainConfig(**changes).validate(world)
    assert caught.value.field == field and isinstance(caught.value, ValueError)


def test_data_is_a_function_of_step_and_independent_of_world_size():
    data = SyntheticBigramData(seed=1)
    batch = data.batch(5, 4, 16)
    assert torch.equal(batch, SyntheticBigramData(seed=1).batch(5, 4, 16))
    assert not torch.equal(batch, data.batch(6, 4, 16))
    assert torch.equal(torch.cat([rank_slice(batch, r, 2) for r in range(2)]), batch)
    # learnable: every token is one of 4 successors of the previous one
    successors = data.table[batch[:, :-1]]
    assert (successors == batch[:, 1:, None]).any(-1).all()


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=20, warmup_steps=5, min_lr_ratio=0.1)
    factors = [lr_factor(step, config) for step in range(21)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[20] == pytest.approx(0.1)


def test_allreduce_sizes_and_bus_factor():
    assert parse_size("1K") == 1024 and parse_size("64M") == 64 * 2**20 and parse_size("1GiB") == 2**30
    assert message_sizes(1024, 16384, 4) == [1024, 4096, 16384]
    assert bus_bandwidth_factor(2) == 1.0 and bus_bandwidth_factor(8) == pytest.approx(1.75)
    with pytest.raises(ValidationError, match="bad size"):
        AllreduceCheckConfig(max_bytes="lots")


def test_check_settings_refuse_bad_values():
    with pytest.raises(ValidationError, match="unknown model preset"):
        TrainCheckConfig.model_validate({"preset": "7b"})
    with pytest.raises(ValidationError, match="no checkpoint to resume from"):
        TrainFailoverConfig.model_validate({"checkpointEvery": 8, "failAtStep": 7})


def test_batch_not_divisible_by_ranks_is_a_config_error_naming_the_key(tmp_path):
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 60)
    config = TrainCheckConfig(global_batch_size=3, nproc_per_node=2)
    with pytest.raises(ConfigError, match=r"Pulumi.local.yaml: dcforge:acceptance.settings.train.globalBatchSize: "
                                          r"global_batch_size 3 is not divisible by the world size 2"):
        TrainCheck().run(ctx, config)


def test_a_refused_training_setting_names_its_own_key(tmp_path):
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 60)
    with pytest.raises(ConfigError, match=r"dcforge:acceptance.settings.train_failover.failRank: fail_rank 2 is not "
                                          r"a rank of a world of size 2"):
        TrainFailoverCheck().run(ctx, TrainFailoverConfig(fail_rank=2, nproc_per_node=2))
    with pytest.raises(ConfigError, match=r"dcforge:acceptance.settings.train.seqLen: seq_len 512 must be"):
        TrainCheck().run(ctx, TrainCheckConfig(seq_len=512, nproc_per_node=2))


def _steps(losses, attempt=0, start=1, t0=100.0):
    return [TrainStep(time=t0 + i, step=start + i, attempt=attempt, loss=loss, step_time_s=0.5, tokens_per_s=1000.0,
                      tokens_per_s_total=2000.0, mfu=0.4, lr=1e-3) for i, loss in enumerate(losses)]


def test_summary_fails_when_loss_does_not_fall():
    config = TrainCheckConfig(steps=4, warmup_steps_excluded=1)
    good = CheckResult("train", declared=TrainCheck.metrics)
    summarize(good, _steps([5.5, 5.0, 4.5, 4.0]), config, 2, 1e11)
    assert good.status == Status.PASS and good.metrics["tokens_per_s"].value == pytest.approx(1000)
    assert good.metrics["tokens_per_s_total"].value == pytest.approx(2000)
    bad = CheckResult("train", declared=TrainCheck.metrics)
    summarize(bad, _steps([5.5, 5.6, 5.5, 5.6]), config, 2, 1e11)
    assert bad.status == Status.FAIL and "loss did not fall" in bad.reason


def _failover_records(resumed_from, first_attempt_steps=6, fault_step=7):
    records = [TrainStart(time=99.0, attempt=0, resumed_from_step=None, world_size=2, device="cpu", preset="tiny")]
    records += _steps([5.0] * first_attempt_steps)
    records += [TrainFault(time=107.0, step=fault_step, rank=1),
                TrainStart(time=110.0, attempt=1, resumed_from_step=resumed_from, world_size=2, device="cpu",
                           preset="tiny")]
    records += _steps([4.0] * (12 - (resumed_from or 0)), attempt=1, start=(resumed_from or 0) + 1, t0=112.0)
    return records


def test_failover_judgement_measures_steps_lost_and_time_to_resume():
    result = CheckResult("train_failover", declared=TrainFailoverCheck.metrics)
    judge_recovery(result, _failover_records(resumed_from=4), TrainFailoverConfig())
    assert result.status == Status.PASS, result.reason
    assert result.metrics["steps_lost"].value == 3 and result.metrics["time_to_resume_s"].value == 5.0
    assert result.plots[0].markers[0]["label"] == "rank 1 killed at step 7"


def test_failover_judgement_fails_a_restart_from_scratch():
    result = CheckResult("train_failover", declared=TrainFailoverCheck.metrics)
    judge_recovery(result, _failover_records(resumed_from=None), TrainFailoverConfig())
    assert result.status == Status.FAIL and "started from scratch" in result.reason
    assert result.metrics["steps_lost"].value == 7


def test_checkpoint_ratio_is_the_median_of_paired_rounds():
    from workloads.train_checkpoint_bench import median_ratio

    # raw/save per round: 0.5, 1.0, 0.25 -> 0.5; one slow round cannot drag the figure like a sum would.
    assert median_ratio([1.0, 1.0, 1.0], [2.0, 1.0, 4.0]) == 0.5
    with pytest.raises(ValueError):
        median_ratio([1.0], [1.0, 2.0])


def test_elastic_torchrun_command_names_min_max_nodes_restarts_and_the_rendezvous_timings():
    from dcforge.placement.torchrun import Elastic, TorchrunJob, torchrun_workload

    plain = torchrun_workload("t", TorchrunJob("train.py", (), nnodes=3)).roles[0]
    assert "--nnodes=3" in plain.command and "--max-restarts=0" in plain.command and plain.min_nodes is None
    job = TorchrunJob("train.py", (), nnodes=3, elastic=Elastic(min_nodes=2, last_call_s=3, keep_alive_interval_s=1,
                                                                 keep_alive_max_attempt=3))
    role = torchrun_workload("t", job).roles[0]
    assert "--nnodes=2:3" in role.command and "--max-restarts=1" in role.command and role.min_nodes == 2
    conf = next(part for part in role.command if part.startswith("--rdzv-conf="))
    assert conf == ("--rdzv-conf=is_host={is_leader},join_timeout=60,last_call_timeout=3,keep_alive_interval=1,"
                    "keep_alive_max_attempt=3")
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def _group(world, steps, attempt=0, saved=(), t0=100.0, resumed=None):
    records = [TrainStart(time=t0, attempt=attempt, resumed_from_step=resumed, world_size=world, device="cpu",
                          preset="tiny")]
    for i, step in enumerate(steps):
        records += _steps([5.0], attempt=attempt, start=step, t0=t0 + 1 + i)
        if step in saved:
            records.append(TrainCheckpointSaved(step=step, bytes=1, save_s=0.1, time=t0 + 1.5 + i))
    return records


@pytest.mark.parametrize("steps, saved, due", [
    ([1, 2, 3, 4, 5], (4,), False),        # step 6 (failAtStep − 1) not complete yet
    ([1, 2, 3, 4, 5, 6], (4,), True),       # the step in progress (7) is failAtStep
    ([1, 2, 3, 4, 5, 6, 7], (4,), False),   # late: step 8 saves a checkpoint next -- wait for it
    ([1, 2, 3, 4, 5, 6, 7, 8], (4,), False),  # its save is under way
    ([1, 2, 3, 4, 5, 6, 7, 8], (4, 8), True),
])
def test_the_node_is_isolated_between_checkpoints_once_failatstep_is_under_way(steps, saved, due):
    from dcforge.checks.failover_multinode import kill_due

    assert kill_due(_group(3, steps, saved=saved), fail_at_step=7, checkpoint_every=4, world_size=3) is due
    # a first rendezvous round that a slow node missed: not the whole world yet
    assert not kill_due(_group(2, steps, saved=saved), fail_at_step=7, checkpoint_every=4, world_size=3)
    assert kill_due(_group(3, [1, 2, 3], saved=(1, 2, 3)), fail_at_step=3, checkpoint_every=1, world_size=3)


def test_multinode_failover_judgement_reuses_the_single_node_formulas():
    from dcforge.checks.failover_multinode import TrainFailoverMultinodeCheck, TrainFailoverMultinodeConfig, with_fault

    records = _group(3, [1, 2, 3, 4, 5, 6], saved=(4,))  # step 6 done at t=106
    records += _group(2, range(5, 13), attempt=1, t0=115.0, resumed=4)
    judged = with_fault(records, 106.5, "ns-host-2")
    fault = next(r for r in judged if isinstance(r, TrainFault))
    assert (fault.step, fault.rank, fault.node, fault.time) == (7, None, "ns-host-2", 106.5)
    assert isinstance(judged[judged.index(fault) + 1], TrainStart)  # just before the restart it caused
    result = CheckResult("train_failover_multinode", declared=TrainFailoverMultinodeCheck.metrics)
    judge_recovery(result, judged, TrainFailoverMultinodeConfig())
    assert result.status == Status.PASS, result.reason
    assert result.metrics["steps_lost"].value == 3 and result.metrics["resumed_step"].value == 4
    assert result.metrics["time_to_resume_s"].value == pytest.approx(116.0 - 106.5)
    assert result.plots[0].markers[0]["label"] == "node ns-host-2 isolated at step 7"


def test_multinode_failover_settings_refuse_a_fault_before_the_first_checkpoint():
    from dcforge.checks.failover_multinode import TrainFailoverMultinodeConfig

    with pytest.raises(ValidationError, match="checkpointEvery 4 must be below failAtStep 4"):
        TrainFailoverMultinodeConfig(fail_at_step=4)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        TrainFailoverMultinodeConfig(fail_node=0)  # node 0 hosts the rendezvous store


def test_multinode_failover_refuses_a_node_it_does_not_have_and_a_batch_the_survivors_cannot_split(tmp_path):
    from dcforge.checks.failover_multinode import TrainFailoverMultinodeCheck, TrainFailoverMultinodeConfig

    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 60)
    with pytest.raises(ConfigError, match=r"settings.train_failover_multinode.failNode: node 5 is not one of the 3 "):
        TrainFailoverMultinodeCheck().run(ctx, TrainFailoverMultinodeConfig(fail_node=5))
    with pytest.raises(ConfigError, match=r"train_failover_multinode.globalBatchSize: global_batch_size 9 is not "
                                          r"divisible by the world size 2"):  # 3 ranks before the loss, 2 after
        TrainFailoverMultinodeCheck().run(ctx, TrainFailoverMultinodeConfig(global_batch_size=9))
