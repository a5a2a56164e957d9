"""The per-request log in NVIDIA AIPerf's `profile_export.jsonl` form, so a run's requests can be compared with an
AIPerf run record by record (the mapping: docs/metrics.md#aiperf-export).

One JSON object per request, `{"metadata": {...}, "metrics": {...}, "error": ...}`, with AIPerf's field names:
metadata `session_num` (the request's index by send time), `request_start_ns`, `request_end_ns` (epoch ns),
`benchmark_phase` (`warmup` or `profiling`), `was_cancelled` (false), `x_request_id` (the request id sent as
`x-request-id`), and null for what this load generator does
not have (`x_correlation_id`, `conversation_id`, `request_ack_ns`, `record_processor_id`,
`cancellation_time_ns`); `worker_id` is `locust`. Metrics, each `{"value", "unit"}`: `time_to_first_token`,
`request_latency`, `inter_token_latency` (AIPerf's name for TPOT), `inter_chunk_latency` (the gaps, a list),
`output_sequence_length`, `input_sequence_length`, `output_token_count` -- only those a request has. A failed
request has `metrics` null (or `error_isl` when its prompt length is known) and `error` `{code, type, message}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

try:
    from loadtests.llm_protocol import RequestRecord, time_per_output_token_s
except ImportError:  # run from inside loadtests/
    from llm_protocol import RequestRecord, time_per_output_token_s  # type: ignore[no-redef]


def _value(value: Any, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit}


def _metrics(record: RequestRecord) -> dict[str, Any] | None:
    if not record.ok:
        return {"error_isl": _value(record.prompt_tokens, "tokens")} if record.prompt_tokens is not None else None
    metrics: dict[str, Any] = {}
    if record.prompt_tokens is not None:
        metrics["input_sequence_length"] = _value(record.prompt_tokens, "tokens")
    if record.ttft_s is not None:
        metrics["time_to_first_token"] = _value(record.ttft_s * 1000, "ms")
    metrics["request_latency"] = _value(record.e2e_s * 1000, "ms")
    metrics["output_token_count"] = _value(record.output_tokens, "tokens")
    times = record.token_times_s
    if len(times) > 1:
        metrics["inter_chunk_latency"] = _value([round((b - a) * 1000, 6) for a, b in zip(times, times[1:])], "ms")
    metrics["output_sequence_length"] = _value(record.output_tokens, "tokens")
    tpot = time_per_output_token_s(record.e2e_s, record.ttft_s, record.output_tokens) \
        if record.ttft_s is not None else None
    if tpot is not None:
        metrics["inter_token_latency"] = _value(tpot * 1000, "ms")
    return metrics


def _error(record: RequestRecord) -> dict[str, Any] | None:
    if record.ok:
        return None
    prefix = record.error.split(":", 1)[0]
    kind = prefix if ":" in record.error and prefix.isidentifier() else "HTTPError" if record.status else "RequestError"
    return {"code": record.status or None, "type": kind, "message": record.error}


def profile_export_line(record: RequestRecord, session_num: int) -> dict[str, Any]:
    """One request as an AIPerf profile_export.jsonl object."""
    return {
        "metadata": {
            "session_num": session_num, "x_request_id": record.request_id or None, "x_correlation_id": None,
            "conversation_id": None, "turn_index": 0, "request_start_ns": round(record.start * 1e9), "request_ack_ns": None,
            "request_end_ns": round(record.end * 1e9), "worker_id": "locust", "record_processor_id": None,
            "benchmark_phase": "warmup" if record.warmup else "profiling", "was_cancelled": False,
            "cancellation_time_ns": None,
        },
        "metrics": _metrics(record),
        "error": _error(record),
    }


def write_profile_export(records: Iterable[RequestRecord], path: str | Path) -> Path:
    """Every record, in send order, as AIPerf's per-request export; returns the path."""
    path = Path(path)
    ordered = sorted(records, key=lambda record: record.start)
    path.write_text("".join(json.dumps(profile_export_line(record, index)) + "\n"
                            for index, record in enumerate(ordered)))
    return path
