"""The typed records between workloads and checks: every type round-trips, lines are found in files and logs
alike, the real writers produce what the readers read, and the load generator and the inference checks take
their defaults and variable names from one place."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from loadtests.llm_protocol import RequestLog
from loadtests.llm_protocol import read_records as read_request_logs
from workloads import records
from workloads.records import (LOAD_DEFAULTS, AllreduceResult, AllreduceRow, CheckpointResult, GpuHealthResult,
                               JsonlAppender, LoadEnv, LoadPodResult, RecordError, ReplicaReady, RequestRecord,
                               StorageClassResult, SystemFacts, TrainCheckpointCorrupt, TrainCheckpointSaved,
                               TrainFault, TrainFinal, TrainStart, TrainStep, emit_result, mark_ready, parse_record,
                               read_records, read_result, read_result_file, ready_replicas)

SAMPLES = [
    TrainStart(attempt=1, resumed_from_step=4, world_size=2, device="cpu", preset="tiny", time=10.5),
    TrainStart(attempt=0, resumed_from_step=None, world_size=8, device="cuda", preset="1.3b", time=1.0),
    TrainStep(step=3, attempt=0, loss=5.25, step_time_s=0.125, tokens_per_s=2048.0, tokens_per_s_total=4096.0,
              mfu=0.41, lr=3e-3, time=11.0),
    TrainStep(step=4, attempt=1, loss=4.5, step_time_s=0.5, tokens_per_s=1.0, tokens_per_s_total=2.0, mfu=None,
              lr=1e-4, time=12.0),
    TrainCheckpointSaved(step=4, bytes=123456, save_s=0.75, time=12.5),
    TrainCheckpointCorrupt(step=6, error="checksum mismatch in model.w", time=13.0),
    TrainFault(step=7, rank=1, time=14.0),
    TrainFinal(step=12, attempt=1, params_sha256="ab" * 32, time=15.0),
    TrainFinal(step=12, attempt=0, params_sha256=None, time=15.0),
    AllreduceResult(environment={"backend": "gloo", "world_size": 2, "device": "cpu", "nccl_env": {}},
                    dtype="float32", warmup=5, iterations=20, formulas=["algbw = bytes / t"],
                    results=[AllreduceRow(1024, 256, 1e-5, 0.1, 0.1, True),
                             AllreduceRow(4096, 1024, 2e-5, 0.2, 0.2, False)]),
    CheckpointResult(preset="tiny", with_optimizer=True, world_size=2, bytes=40_000_000,
                     tensor_bytes_per_replica=20_000_000, tensors=42, rounds=3, save_s=0.2, load_s=0.1,
                     raw_write_s=0.1, verify_s=0.05, save_times_s=[0.2, 0.21, 0.19], raw_write_times_s=[0.1] * 3,
                     save_gbps=0.2, load_gbps=0.4, raw_write_gbps=0.4, save_ratio_to_raw=0.5, checksum_match=True,
                     corruption_detected=None, directory="/tmp/x"),
    ReplicaReady(pid=4242, time=16.0),
    LoadPodResult(ready_s=2.5, replicas_ready=2, endpoint_findings=[{"rule": "api-key-required", "passed": True,
                                                                     "detail": "6 unauthenticated requests got 401"}],
                  locust_exit=0, windows=[{"start": 1.0, "stop": 21.0, "grace_s": 10.0, "sent": 90, "abandoned": 0}],
                  locust_started=0.5, server_metrics="dcforge_queue_depth 0.0\n"),
    GpuHealthResult(hostname="gpu-node-a", dcgm_level=2, health={"gpus": [], "xids": [], "dcgm": None,
                                                                 "notes": ["NVML could not be read"]}),
    StorageClassResult(name="checkpoints", directory="/dcforge/checkpoints/storage", direct_io=True,
                       sequential_bytes=1 << 30, figures={"seq_write_gbps": 1.5, "data_verified": 1.0},
                       fsync_percentiles_ms={"99.000000": 2.5},
                       metadata={"files": 2000, "create_per_s": 9000.0, "stat_per_s": 90000.0,
                                 "delete_per_s": 12000.0, "ops_per_s": 15000.0}, verify_failure=None,
                       fio="fio-3.33"),
    SystemFacts(hostname="gpu-01", cpu_count=64, memory_gi=1007.5, cpu_model="AMD EPYC 9454", kernel="6.8.0",
                os="Linux-6.8.0-x86_64", python="3.11.7", versions={"torch": "2.5.1", "nccl": "2.26.2"},
                gpus=[{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559.0, "driver": "570.172.08"}]),
    RequestRecord(start=1.0, end=2.0, ok=True, status=200, ttft_s=0.1, e2e_s=1.0, token_times_s=[0.1, 0.5],
                  output_tokens=2, prompt_tokens=64, replica="4242"),
    RequestRecord(start=3.0, end=3.0, ok=False, error="dropped: client at max in-flight", stream=False),
]


def test_every_record_type_has_a_sample_here():
    assert {type(sample) for sample in SAMPLES} == set(records._RECORD_TYPES.values())


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: sample.kind)
def test_every_record_round_trips_through_its_type(sample):
    line = sample.to_json()
    assert "\n" not in line and line.startswith(f'{{"record":"{sample.kind}",')
    assert parse_record(line) == sample
    assert type(sample).from_json(line) == sample
    assert json.loads(line) == {"record": sample.kind, **dataclasses.asdict(sample)}


def test_the_request_records_fast_encoder_writes_what_the_generic_one_would():
    record = SAMPLES[-2]
    assert json.loads(record.to_json()) == json.loads(records.Record.to_json(record))


def test_records_are_found_in_a_log_stream_among_other_lines_and_behind_prefixes():
    log = ["step     1  loss 5.5000     12.0 ms       900 tok/s/device",
           "2026-11-30T16:00:00Z " + SAMPLES[2].to_json(),
           "[rank0]: " + SAMPLES[4].to_json(),
           "",
           SAMPLES[7].to_json(),
           '{"record":"train.step","step": 9, "att']  # torn: the writer was killed mid-line
    assert read_records(log) == [SAMPLES[2], SAMPLES[4], SAMPLES[7]]
    assert read_records(log, TrainStep) == [SAMPLES[2]]
    assert read_result(iter(log), TrainFinal) == SAMPLES[7]
    with pytest.raises(RecordError, match="no 'allreduce.result' result line in the output"):
        read_result(log, AllreduceResult)


def test_a_wrong_record_is_an_error_not_a_silent_gap():
    with pytest.raises(RecordError, match="unknown record type 'train.stepp'"):
        parse_record('{"record":"train.stepp","step":1}')
    with pytest.raises(RecordError, match="unknown fields bogus"):
        parse_record('{"record":"train.fault","step":1,"rank":0,"time":1.0,"bogus":2}')
    with pytest.raises(RecordError, match="missing 1 required positional argument: 'rank'"):
        parse_record('{"record":"train.fault","step":1}')
    with pytest.raises(RecordError, match="expected a 'train.final' record, got 'train.fault'"):
        TrainFinal.from_json(SAMPLES[6].to_json())


def test_a_result_line_goes_to_stdout_and_to_the_output_file(tmp_path, capsys):
    output = tmp_path / "sweep.json"
    emit_result(SAMPLES[9], output)
    printed = capsys.readouterr().out
    assert read_result(printed.splitlines(), AllreduceResult) == SAMPLES[9]  # e.g. from a pod log
    assert read_result_file(output, AllreduceResult) == SAMPLES[9]
    assert json.loads(output.read_text())["results"][1]["correct"] is False  # the file is plain JSON too


def test_appended_lines_and_the_request_log_read_back_as_written(tmp_path):
    appender = JsonlAppender(tmp_path / "metrics.jsonl")
    for sample in SAMPLES[:8]:
        appender.write(sample)
    assert read_records((tmp_path / "metrics.jsonl").read_text().splitlines()) == SAMPLES[:8]
    JsonlAppender(None).write(SAMPLES[0])  # no file configured: nothing to write, no error

    log = RequestLog(tmp_path / "requests-{pid}.jsonl")
    for sample in reversed(SAMPLES[-2:]):
        log.write(sample)
    log.close()
    assert read_request_logs([log.path]) == SAMPLES[-2:]  # sorted by send time


def test_readiness_files_name_the_replicas_that_serve(tmp_path):
    path = mark_ready(tmp_path, pid=101)
    mark_ready(tmp_path, pid=202)
    (tmp_path / "ready-303").write_text("")  # caught before its line was written: not ready yet
    assert set(ready_replicas(tmp_path)) == {101, 202}
    path.unlink()
    assert set(ready_replicas(tmp_path)) == {202}


_SIDE_DEFAULTS = textwrap.dedent("""
    import json, sys
    from workloads import records
    if sys.argv[2] == "patched":  # a different value in the one place must reach the side under test
        records.LOAD_DEFAULTS = records.LoadDefaults(endpoint="completions", prompt_tokens=99,
                                                     prompt_tokens_spread=0.125, max_tokens=11, arrival="poisson",
                                                     rate=7.5, request_timeout_s=42.0, warmup_per_replica=5)
    if sys.argv[1] == "locust":
        from locust import argument_parser, events
        parser = argument_parser.get_parser()
        import loadtests.locustfile
        events.init_command_line_parser.fire(parser=parser)
        options = {a.dest: (a.default, getattr(a, "env_var", None)) for a in parser._actions}
        print(json.dumps({"endpoint": options["llm_endpoint"][0], "prompt_tokens": options["llm_prompt_tokens"][0],
                          "prompt_tokens_spread": options["llm_prompt_tokens_spread"][0],
                          "max_tokens": options["llm_max_tokens"][0], "arrival": options["llm_arrival"][0],
                          "rate": options["llm_rate"][0], "request_timeout_s": options["llm_timeout"][0],
                          "warmup_per_replica": options["llm_warmup_per_replica"][0],
                          "env_vars": sorted(v for k, (_, v) in options.items() if k.startswith("llm_"))}))
    else:
        from dcforge.checks.inference import InferenceConfig
        config = InferenceConfig()
        spread = config.prompt_tokens_spread
        print(json.dumps({"endpoint": config.endpoint, "prompt_tokens": config.prompt_tokens,
                          "prompt_tokens_spread": spread, "max_tokens": config.max_tokens,
                          "arrival": config.arrival, "rate": config.rate,
                          "request_timeout_s": config.request_timeout_s,
                          "warmup_per_replica": config.warmup_per_replica}))
""")


def _defaults(side: str, patched: bool) -> dict:
    completed = subprocess.run([sys.executable, "-c", _SIDE_DEFAULTS, side, "patched" if patched else "as-is"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])


def test_the_inference_check_and_the_locustfile_read_the_same_defaults_from_one_place():
    expected = dataclasses.asdict(LOAD_DEFAULTS)
    locust, check = _defaults("locust", patched=False), _defaults("check", patched=False)
    assert {k: v for k, v in locust.items() if k != "env_vars"} == check == expected
    assert (expected["rate"], expected["request_timeout_s"]) == (10.0, 30.0)  # the checks' values, kept
    # Changing the one definition changes both sides: neither keeps a copy of its own.
    patched_locust, patched_check = _defaults("locust", patched=True), _defaults("check", patched=True)
    assert {k: v for k, v in patched_locust.items() if k != "env_vars"} == patched_check != expected
    assert patched_check["rate"] == 7.5 and patched_check["request_timeout_s"] == 42.0
    # Every variable the check may set is one the locustfile reads, by the same constant.
    names = {value for key, value in vars(LoadEnv).items() if not key.startswith("_")}
    assert set(locust["env_vars"]) == names
