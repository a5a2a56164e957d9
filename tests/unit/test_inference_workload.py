"""Issue 13's load-side pieces without a server: the warm-up plan, workload shapes (lengths, prompt files, shared
prefixes), AIPerf's per-request export, vLLM's goodput setting and the SLO keys that are aliases."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from dcforge.checks.inference import InferenceConfig
from dcforge.steps.serving.settings import fitted_prompt_tokens
from loadtests.aiperf_export import profile_export_line, write_profile_export
from loadtests.llm_protocol import (PromptFileError, Workload, read_prompt_file, request_body, shared_prefixes,
                                    uniform_length)
from loadtests.metrics import main as metrics_main
from loadtests.warmup import CAP_FACTOR, WarmupPlan
from workloads.records import RequestRecord


def _drive(plan: WarmupPlan, replies: list[str]) -> int:
    """Send while the plan wants more, answering from `replies` in turn (one at a time); the number sent."""
    answers = iter(replies)
    while plan.take():
        plan.finish(True, next(answers))
    assert plan.done
    return plan.sent


def test_warmup_goes_on_until_every_replica_answered_its_share():
    plan = WarmupPlan(per_replica=2, replicas=3)
    assert _drive(plan, ["a", "a", "a", "b", "b", "a", "c", "c", "a"]) == 8  # c's second answer completes it
    assert plan.answers == {"a": 4, "b": 2, "c": 2}


def test_warmup_gives_up_at_its_cap_when_a_replica_never_answers():
    plan = WarmupPlan(per_replica=2, replicas=3)
    assert _drive(plan, ["a", "b"] * 100) == CAP_FACTOR * 2 * 3


def test_warmup_against_a_server_without_replica_header_counts_answers():
    assert _drive(WarmupPlan(per_replica=2, replicas=2), [""] * 10) == 4


def test_warmup_waits_for_requests_in_flight_and_failures_do_not_count():
    plan = WarmupPlan(per_replica=1, replicas=1)
    assert plan.take() and plan.take() and not plan.done  # two users sent one each
    plan.finish(False, "")
    assert not plan.done and plan.take()  # a failure warmed nothing: one more
    plan.finish(True, "r")
    assert not plan.done  # one still in flight
    plan.finish(True, "r")
    assert plan.done and not plan.take()
    assert WarmupPlan(per_replica=0).done


def test_lengths_are_fixed_or_uniform_within_the_spread():
    rng = random.Random(3)
    assert {uniform_length(rng, 64, 0.0) for _ in range(50)} == {64}
    lengths = [uniform_length(rng, 100, 0.5) for _ in range(2000)]
    assert min(lengths) >= 50 and max(lengths) <= 150 and min(lengths) < 55 and max(lengths) > 145
    workload = Workload(prompt_tokens=40, max_tokens=16, prompt_tokens_spread=0.0, max_tokens_spread=0.25)
    prompts = [workload.next(rng) for _ in range(500)]
    assert {len(p.text) for p in prompts} <= {39, 40} and {p.system for p in prompts} == {""}  # fixed length
    assert {p.max_tokens for p in prompts} == set(range(12, 21))


def test_shared_prefixes_are_few_long_distinct_and_the_same_in_every_process():
    prefixes = shared_prefixes(3, 200)
    assert len(set(prefixes)) == 3 and all(len(p) >= 200 for p in prefixes)
    assert shared_prefixes(3, 200) == prefixes  # another Locust process builds the same ones
    workload = Workload(prompt_tokens=20, max_tokens=8, prefixes=prefixes)
    prompts = [workload.next(random.Random(i)) for i in range(60)]
    assert {p.system for p in prompts} == set(prefixes) and len({p.text for p in prompts}) > 50
    chat = request_body("chat", "m", "question", 8, True, 0.0, system=prefixes[0])
    assert chat["messages"] == [{"role": "system", "content": prefixes[0]}, {"role": "user", "content": "question"}]
    assert request_body("completions", "m", "question", 8, True, 0.0, system="S")["prompt"] == "S\n\nquestion"


def test_prompt_file_takes_vllm_and_aiperf_lines(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "one"}\n\n{"text": "two", "output_tokens": 5}\n{"prompt": "three", "max_tokens": 7}\n')
    assert read_prompt_file(path) == [("one", None), ("two", 5), ("three", 7)]
    workload = Workload(prompt_tokens=99, max_tokens=4, file_prompts=read_prompt_file(path))
    seen = {(p.text, p.max_tokens) for p in (workload.next(random.Random(i)) for i in range(50))}
    assert seen == {("one", 4), ("two", 5), ("three", 7)}


@pytest.mark.parametrize("content, expected", [
    ('{"prompt": "ok"}\nnot json\n', "line 2: not JSON"),
    ('{"prompt": ""}\n', 'line 1: expected an object with a non-empty "prompt"'),
    ('["a"]\n', "line 1: expected an object"),
    ('{"prompt": "a", "max_tokens": 0}\n', 'line 1: "max_tokens"/"output_tokens" must be an integer >= 1'),
    ("\n\n", "no prompts"),
])
def test_a_bad_prompt_file_names_file_and_line(tmp_path, content, expected):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=expected) as caught:
        read_prompt_file(path)
    assert str(caught.value).startswith(str(path))


def test_prompt_room_accounts_for_output_spread_and_shared_prefix():
    assert fitted_prompt_tokens(InferenceConfig(prompt_tokens=64, max_tokens=32), 256) == 64
    # 256 - 48 (template) - 40 (longest answer) - 128 (prefix) = 40 tokens left, /1.25 for the prompt spread
    config = InferenceConfig(prompt_tokens=64, max_tokens=32, max_tokens_spread=0.25, shared_prefixes=2,
                             shared_prefix_tokens=128)
    assert fitted_prompt_tokens(config, 256) == 32
    with pytest.raises(ValueError, match="sharedPrefixTokens 200 leave no room"):
        fitted_prompt_tokens(InferenceConfig(shared_prefixes=1, shared_prefix_tokens=200), 256)


def _streamed(start: float, warmup: bool = False) -> RequestRecord:
    return RequestRecord(start=start, end=start + 0.5, ok=True, status=200, ttft_s=0.1, e2e_s=0.5,
                         token_times_s=[0.1, 0.3, 0.5], output_tokens=3, prompt_tokens=12, replica="7", warmup=warmup)


def test_aiperf_export_uses_aiperf_field_names():
    line = profile_export_line(_streamed(100.0), 4)
    metadata, metrics = line["metadata"], line["metrics"]
    assert metadata["session_num"] == 4 and metadata["benchmark_phase"] == "profiling"
    assert (metadata["request_start_ns"], metadata["request_end_ns"]) == (100_000_000_000, 100_500_000_000)
    assert metrics["time_to_first_token"] == {"value": pytest.approx(100), "unit": "ms"}
    assert metrics["request_latency"]["value"] == pytest.approx(500)
    assert metrics["inter_token_latency"]["value"] == pytest.approx(200)  # AIPerf's ITL is our TPOT
    assert metrics["inter_chunk_latency"]["value"] == pytest.approx([200, 200])
    assert metrics["input_sequence_length"] == {"value": 12, "unit": "tokens"}
    assert metrics["output_sequence_length"]["value"] == 3 and line["error"] is None
    failed = profile_export_line(RequestRecord(start=1.0, end=2.0, ok=False, status=503,
                                               error="HTTP 503: overloaded"), 0)
    assert failed["metrics"] is None
    assert failed["error"] == {"code": 503, "type": "HTTPError", "message": "HTTP 503: overloaded"}
    broken = profile_export_line(RequestRecord(start=1.0, end=2.0, ok=False, status=200, prompt_tokens=9,
                                               error="ConnectionError: stream ended before [DONE]"), 0)
    assert broken["error"]["type"] == "ConnectionError" and broken["metrics"] == {"error_isl": {"value": 9,
                                                                                               "unit": "tokens"}}


def test_aiperf_export_from_the_command_line_keeps_warmup_marked(tmp_path, capsys):
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(r.to_json() + "\n" for r in (_streamed(2.0), _streamed(1.0, warmup=True))))
    out = tmp_path / "profile_export.jsonl"
    assert metrics_main(["--export-aiperf", str(out), str(log)]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 1  # the summary leaves the warm-up out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["metadata"]["session_num"], x["metadata"]["benchmark_phase"]) for x in lines] == \
        [(0, "warmup"), (1, "profiling")]
    assert write_profile_export([], tmp_path / "empty.jsonl").read_text() == ""


def _validate(env_file, replace: dict[str, str]) -> subprocess.CompletedProcess:
    path = env_file("local", replace=replace)
    return subprocess.run([sys.executable, "-m", "dcforge.cli", "validate", "--env-file", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_malformed_goodput_is_exit_2_with_one_line_naming_the_key(env_file):
    proc = _validate(env_file, {'goodput: "ttft:1000 tpot:150"': 'goodput: "ttft:1000 tpot:fast"'})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dcforge:acceptance.settings.inference.goodput" in lines[0]
    assert "expected 'ttft:MS tpot:MS e2el:MS'" in lines[0] and "'tpot:fast'" in lines[0]


def test_former_goodput_settings_name_the_new_one(env_file):
    proc = _validate(env_file, {'goodput: "ttft:1000 tpot:150"': "goodputTtftMs: 1000"})
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "inference.goodputTtftMs" in line and "set dcforge:acceptance.settings.inference.goodput" in line


@pytest.mark.parametrize("alias, canonical, source", [
    ("ttft_ms.p95", "p95_ttft_ms", "dcforge (former)"),
    ("rps", "request_throughput", "dcforge (former)"),
    ("time_to_first_token.avg", "mean_ttft_ms", "aiperf"),
    ("inter_token_latency.p99", "p99_tpot_ms", "aiperf"),
])
def test_an_slo_on_an_alias_is_refused_naming_the_canonical_key(env_file, alias, canonical, source):
    proc = _validate(env_file, {"inference.p95_ttft_ms:": f"inference.{alias}:"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"dcforge:acceptance.slos.inference.{alias}" in line
    assert line.endswith(f"'{alias}' is the {source} name of this metric; write inference.{canonical}")


def test_prompt_file_is_found_beside_the_environment_file_and_a_bad_one_names_the_setting(env_file, tmp_path):
    import time

    from dcforge.steps.serving.load import describe_workload, resolved_prompt_file
    from dcforge.errors import ConfigError
    from dcforge.harness.check import CheckContext
    from dcforge.spec.loader import load_environment

    path = env_file("local")  # written into tmp_path
    ctx = CheckContext(env=load_environment(path=path), report_dir=tmp_path / "report",
                       deadline=time.monotonic() + 60, log=lambda line: None)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hello"}\n')
    config = InferenceConfig(prompt_file="prompts.jsonl", shared_prefixes=2, shared_prefix_tokens=64)
    resolved = resolved_prompt_file(ctx, config, "dcforge:acceptance.settings.inference.promptFile")
    assert resolved == (tmp_path / "prompts.jsonl").resolve()
    assert describe_workload(config, 64, resolved) == \
        f"prompts from {resolved}, each behind one of 2 shared 64-token system prompts; answers of 32 tokens"
    assert describe_workload(InferenceConfig(), 64, None) == \
        "generated prompts of uniform 48-80 tokens; answers of 32 tokens"
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hello"}\n{"prompt": 3}\n')
    with pytest.raises(ConfigError) as caught:
        resolved_prompt_file(ctx, config, "dcforge:acceptance.settings.inference.promptFile")
    assert caught.value.key == "dcforge:acceptance.settings.inference.promptFile" and "line 2" in str(caught.value)
    assert resolved_prompt_file(ctx, InferenceConfig(), "k") is None
