"""Serving metric formulas (docs/metrics.md#inference) on hand-made request logs, and the log format itself."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest

from loadtests.llm_protocol import RequestLog, RequestRecord, make_prompt, parse_sse_line, read_records, request_body
from loadtests.metrics import RequestSlo, main, parse_goodput, summarize, time_to_recover, windows


def record(start: float, e2e: float = 1.0, ok: bool = True, ttft: float | None = 0.2, tokens: int = 5,
           times: list[float] | None = None) -> RequestRecord:
    return RequestRecord(start=start, end=start + e2e, ok=ok, e2e_s=e2e, ttft_s=ttft if ok else None,
                         output_tokens=tokens if ok else 0, prompt_tokens=10, token_times_s=times or [],
                         error="" if ok else "boom", replica="1")


def test_summary_formulas_under_vllm_names():
    records = [record(0.0, e2e=1.0, ttft=0.2, tokens=5, times=[0.2, 0.4, 0.6, 0.8, 1.0]),
               record(1.0, e2e=2.0, ttft=0.5, tokens=4, times=[0.5, 1.0, 1.5, 2.0]),
               record(2.0, ok=False, e2e=1.0)]
    summary = summarize(records, RequestSlo(ttft_ms=300))
    assert summary["duration"] == 3.0  # first send 0.0 -> last answer 3.0
    assert (summary["requests"], summary["completed"], summary["failed"]) == (3, 2, 1)
    assert summary["request_throughput"] == pytest.approx(2 / 3)
    assert summary["error_rate"] == pytest.approx(1 / 3)
    assert summary["output_throughput"] == pytest.approx(9 / 3)
    assert summary["total_token_throughput"] == pytest.approx((9 + 20) / 3)
    assert (summary["total_input_tokens"], summary["total_output_tokens"]) == (20, 9)
    # TPOT = (e2e - TTFT) / (tokens - 1): 0.8/4 = 200 ms and 1.5/3 = 500 ms
    assert summary["median_tpot_ms"] == summary["p50_tpot_ms"] == pytest.approx(350)
    assert summary["mean_tpot_ms"] == pytest.approx(350) and summary["std_tpot_ms"] == pytest.approx(150)
    # ITL pools every gap: four of 200 ms and three of 500 ms
    assert summary["p50_itl_ms"] == pytest.approx(np.percentile([200] * 4 + [500] * 3, 50))
    assert summary["p99_ttft_ms"] == pytest.approx(np.percentile([200, 500], 99))
    assert summary["p90_e2el_ms"] == pytest.approx(np.percentile([1000, 2000], 90))
    assert summary["mean_output_tokens"] == 4.5
    assert (summary["min_output_tokens"], summary["max_output_tokens"]) == (4, 5)
    assert summary["p50_input_tokens"] == 10
    # Goodput: only the first request succeeded within TTFT 300 ms
    assert summary["request_goodput"] == pytest.approx(1 / 3)
    assert summary["goodput_fraction"] == pytest.approx(1 / 3)


def test_statistics_of_nothing_are_nan_not_zero():
    summary = summarize([record(0.0, ok=False)])
    assert summary["error_rate"] == 1.0 and math.isnan(summary["p95_ttft_ms"]) and math.isnan(summary["std_itl_ms"])


def test_warmup_requests_are_in_no_statistic():
    warm = [dataclasses.replace(record(float(i), e2e=9.0, ttft=8.0, times=[8.0, 9.0]), warmup=True) for i in range(3)]
    warm.append(dataclasses.replace(record(3.0, ok=False), warmup=True))
    measured = [record(10.0, e2e=1.0, ttft=0.2, times=[0.2, 1.0]), record(11.0, e2e=1.0, ttft=0.4, times=[0.4, 1.0])]
    assert summarize(warm + measured) == summarize(measured)
    summary = summarize(warm + measured)
    assert summary["requests"] == 2 and summary["failed"] == 0 and summary["max_output_tokens"] == 5
    assert summary["duration"] == 2.0 and summary["p99_ttft_ms"] < 400  # the 8-s warm-up TTFTs poison nothing


@pytest.mark.parametrize("text, expected", [
    ("ttft:500", RequestSlo(ttft_ms=500)),
    ("ttft:500 tpot:50", RequestSlo(ttft_ms=500, tpot_ms=50)),
    ("  e2el:2000.5   tpot:.5 ", RequestSlo(tpot_ms=0.5, e2el_ms=2000.5)),
])
def test_goodput_is_written_as_vllm_writes_it(text, expected):
    assert parse_goodput(text) == expected
    assert parse_goodput(expected.describe()) == expected


@pytest.mark.parametrize("text", ["", "ttft", "ttft:", "ttft:abc", "ttft:0", "ttft:-5", "latency:5",
                                  "ttft:5 ttft:6", "ttft=5", "ttft:5,tpot:6", "TTFT:5"])
def test_malformed_goodput_is_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match=r"expected 'ttft:MS tpot:MS e2el:MS'"):
        parse_goodput(text)


def test_goodput_limits_judge_each_request():
    slow_tpot = record(0.0, e2e=2.0, ttft=0.1, tokens=3)  # TPOT 950 ms
    fast = record(1.0, e2e=0.3, ttft=0.1, tokens=3)       # TPOT 100 ms, e2e 300 ms
    assert [parse_goodput("tpot:200").met_by(r) for r in (slow_tpot, fast)] == [False, True]
    assert not parse_goodput("e2el:250").met_by(fast) and parse_goodput("e2el:300 ttft:100").met_by(fast)


def test_time_to_recover_needs_k_consecutive_healthy_windows():
    t_kill = 100.0
    records = [record(t_kill + 0.1, ok=False), record(t_kill + 0.5, ok=False)]      # window 0: errors
    records += [record(t_kill + 1.2, e2e=5.0)]                                         # window 1: too slow
    records += [record(t_kill + s + 0.3, e2e=0.5) for s in (2, 3)]                     # windows 2, 3: healthy
    records += [record(t_kill + 4.5, ok=False)]                                        # window 4: error
    records += [record(t_kill + s + 0.3, e2e=0.5) for s in (5, 6, 7)]                  # 5, 6, 7: healthy
    assert time_to_recover(records, t_kill, 108.0, consecutive=3, max_error_rate=0.0, max_p95_ms=1000) == 5.0
    assert time_to_recover(records, t_kill, 108.0, consecutive=2, max_error_rate=0.0, max_p95_ms=1000) == 2.0
    assert time_to_recover(records, t_kill, 108.0, consecutive=4, max_error_rate=0.0, max_p95_ms=1000) is None


def test_an_empty_window_is_not_evidence_of_recovery():
    records = [record(10.2), record(12.2), record(13.2)]  # nothing sent in [11, 12)
    assert [w.requests for w in windows(records, 10.0, 14.0)] == [1, 0, 1, 1]
    assert time_to_recover(records, 10.0, 14.0, consecutive=2, max_error_rate=0, max_p95_ms=5000) == 2.0


def test_sse_lines_parse_like_openai_streams():
    chat = parse_sse_line('data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}')
    assert chat.text == "hi" and not chat.done
    text = parse_sse_line('data: {"choices":[{"index":0,"text":"yo","finish_reason":"length"}]}')
    assert (text.text, text.finish_reason) == ("yo", "length")
    usage = parse_sse_line('data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}')
    assert usage.usage["completion_tokens"] == 7 and usage.text == ""
    assert parse_sse_line("data: [DONE]").done
    assert parse_sse_line(": keep-alive") is None and parse_sse_line("") is None
    assert parse_sse_line('data: {"error":{"message":"bad"}}').error == "bad"
    assert parse_sse_line("data: {not json").error.startswith("malformed")


def test_request_log_round_trip_and_cli(tmp_path, capsys):
    log = RequestLog(tmp_path / "requests-{pid}.jsonl")
    assert "{pid}" not in log.path.name
    log.write(RequestRecord(start=2.0, end=3.0, ok=True, ttft_s=0.1, e2e_s=1.0, token_times_s=[0.1, 0.4],
                            output_tokens=2, prompt_tokens=4, replica="77"))
    log.write(RequestRecord(start=1.0, end=1.5, ok=False, error="HTTP 500", e2e_s=0.5))
    log.close()
    with open(log.path, "a") as handle:
        handle.write('{"record":"llm.request","start": 5, "torn')  # a writer killed mid-line must not break reading
    records = read_records([log.path])
    assert [r.start for r in records] == [1.0, 2.0]
    assert main([str(log.path)]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 2
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert main(["--goodput", "ttft:50", str(log.path)]) == 0
    assert json.loads(capsys.readouterr().out)["goodput_fraction"] == 0  # 100 ms TTFT, and one failed
    assert main(["--goodput", "ttft:fast", str(log.path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: --goodput: expected 'ttft:MS tpot:MS e2el:MS'")


def test_prompts_and_bodies():
    prompt = make_prompt(random.Random(1), 100)
    assert len(prompt) == 100
    chat = request_body("chat", "m", "hi", 8, True, 0.5)
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["stream_options"]["include_usage"]
    plain = request_body("completions", "m", "hi", 8, False, 0.5)
    assert plain["prompt"] == "hi" and "stream_options" not in plain


def test_stages_parse_and_refuse_nonsense():
    from loadtests.llm_protocol import Stage, parse_stages

    assert parse_stages("10:4:2, 30:16") == [Stage(10, 4, 2), Stage(30, 16, 16)]
    for bad in ("", "10", "a:b", "10:4,5:8", "10:-1", "10:4:0"):
        with pytest.raises(ValueError):
            parse_stages(bad)
