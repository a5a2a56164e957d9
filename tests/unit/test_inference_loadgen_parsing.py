"""The LLM user's cheap paths give exactly what the full parse and an unbuffered log would."""

from __future__ import annotations

import dataclasses
import json

import pytest

from loadtests.llm_protocol import RequestLog, RequestRecord, chunk_has_text_fast, parse_sse_line, read_records

CHUNKS = [
    '{"choices":[{"index":0,"delta":{"content":"tok"}}]}',
    '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',  # role chunk: no text
    '{"choices":[{"index":0,"delta":{"content":null},"finish_reason":"length"}]}',
    '{"choices":[{"index":0,"text":"yo","finish_reason":null}]}',
    '{"choices":[{"index":0,"text":""}],"usage":null}',
    '{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
    '{"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":8}}',
    '{"error":{"message":"boom"},"choices":[{"delta":{"content":"x"}}]}',
    '{"choices":[{"index":0,"delta":{"content": "spaced"}}]}',  # other spacing: full parse decides
    '{"choices":[{"index":0,"delta":{"content":"say \\"usage\\" and \\"content\\":\\"\\""}}]}',
    '{"choices":[{"index":0,"delta":{"content":"\\"quoted\\""}}]}',
    '{"choices":[{"index":0,"delta":{"content":"x"}}]',  # truncated: malformed
    '[{"content":"x"}]',
]


@pytest.mark.parametrize("payload", CHUNKS)
def test_fast_path_only_claims_what_the_full_parse_agrees_with(payload):
    full = parse_sse_line(f"data: {payload}")
    if chunk_has_text_fast(payload.encode()):
        assert full.text and not full.usage and not full.error and not full.done


def test_fast_path_takes_the_common_token_chunks():
    assert chunk_has_text_fast(CHUNKS[0].encode()) and chunk_has_text_fast(CHUNKS[3].encode())
    assert chunk_has_text_fast(CHUNKS[9].encode()) and chunk_has_text_fast(CHUNKS[10].encode())
    assert not any(chunk_has_text_fast(CHUNKS[i].encode()) for i in (1, 2, 5, 6, 7, 11, 12))


def test_buffered_log_writes_every_record_by_flush_and_close(tmp_path):
    log = RequestLog(tmp_path / "requests-{pid}.jsonl", flush_every=3, flush_after_s=3600)
    records = [RequestRecord(start=float(i), end=i + 0.5, ok=True, ttft_s=0.1, e2e_s=0.5,
                             token_times_s=[0.1, 0.123456789], output_tokens=2) for i in range(7)]
    for record in records[:2]:
        log.write(record)
    assert log.path.read_text() == ""  # buffered: no write call per request
    log.write(records[2])
    assert len(log.path.read_text().splitlines()) == 3  # a full batch is written at once
    log.write(records[3])
    log.flush()
    assert len(log.path.read_text().splitlines()) == 4
    for record in records[4:]:
        log.write(record)
    log.close()
    lines = read_records([log.path])
    assert [line.start for line in lines] == [float(i) for i in range(7)]
    assert lines[0].token_times_s == [0.1, 0.123457]
    assert json.loads(records[0].to_json()).keys() == {"record", *(f.name for f in dataclasses.fields(RequestRecord))}
    with pytest.raises(ValueError, match="closed"):
        log.write(records[0])  # a record after close is an error, never a silent loss


def test_buffered_log_writes_old_lines_at_the_next_request(tmp_path):
    log = RequestLog(tmp_path / "r.jsonl", flush_every=1000, flush_after_s=0.0)
    log.write(RequestRecord(start=1.0, end=2.0, ok=True))
    assert len(log.path.read_text().splitlines()) == 1
    log.close()
