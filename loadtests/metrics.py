"""LLM serving metrics from the per-request JSONL log (docs/metrics.md#inference), exact numpy percentiles.

    python -m loadtests.metrics requests-*.jsonl          # summary of any run, e.g. against vLLM

TTFT = first non-empty token - send. TPOT = (e2e - TTFT) / (output_tokens - 1). ITL = every gap between
consecutive non-empty chunks, pooled over requests. Goodput = requests that succeeded and met every per-request
SLO, per second. TTR after a kill at t_kill = first t >= t_kill from which K consecutive 1-s windows have error
rate <= SLO and p95 latency <= SLO, minus t_kill.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from loadtests.llm_protocol import RequestRecord, read_records, time_per_output_token_s
except ImportError:  # run from inside loadtests/
    from llm_protocol import RequestRecord, read_records, time_per_output_token_s  # type: ignore[no-redef]

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class RequestSlo:
    """Per-request limits a request must meet to count towards goodput; None disables one."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        ttft_ms = record.ttft_s * 1000 if record.ttft_s is not None else None
        tpot = time_per_output_token_s(record.e2e_s, record.ttft_s, record.output_tokens) \
            if record.ttft_s is not None else None
        checks = ((self.ttft_ms, ttft_ms), (self.tpot_ms, tpot * 1000 if tpot is not None else None),
                  (self.e2e_ms, record.e2e_s * 1000))
        return all(limit is None or (value is not None and value <= limit) for limit, value in checks)


def percentiles(values: Sequence[float], prefix: str) -> dict[str, float]:
    """`{prefix}.p50/.p95/.p99` exactly (numpy linear interpolation); NaN when there are no values."""
    if len(values) == 0:
        return {f"{prefix}.p{p}": float("nan") for p in PERCENTILES}
    computed = np.percentile(np.asarray(values, dtype=float), PERCENTILES)
    return {f"{prefix}.p{p}": float(v) for p, v in zip(PERCENTILES, computed)}


def latencies_ms(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    """TTFT, TPOT, ITL and e2e samples in ms from the successful requests."""
    ttft, tpot, itl, e2e = [], [], [], []
    for record in records:
        if not record.ok:
            continue
        e2e.append(record.e2e_s * 1000)
        if record.ttft_s is not None:
            ttft.append(record.ttft_s * 1000)
            per_token = time_per_output_token_s(record.e2e_s, record.ttft_s, record.output_tokens)
            if per_token is not None:
                tpot.append(per_token * 1000)
        times = record.token_times_s
        itl.extend((b - a) * 1000 for a, b in zip(times, times[1:]))
    return {"ttft_ms": ttft, "tpot_ms": tpot, "itl_ms": itl, "e2e_ms": e2e}


def summarize(records: Sequence[RequestRecord], slo: RequestSlo = RequestSlo()) -> dict[str, float]:
    """Throughput, latency percentiles, error rate and goodput of the given requests.

    The measurement interval runs from the first send to the last answer of these requests.
    """
    if not records:
        return {"requests": 0.0, "failed_requests": 0.0, "error_rate": float("nan")}
    interval = max(r.end for r in records) - min(r.start for r in records)
    interval = max(interval, 1e-9)
    ok = [r for r in records if r.ok]
    summary: dict[str, float] = {
        "requests": float(len(records)),
        "failed_requests": float(len(records) - len(ok)),
        "error_rate": (len(records) - len(ok)) / len(records),
        "interval_s": interval,
        "rps": len(ok) / interval,
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / interval,
        "total_tokens_per_s": sum(r.output_tokens + (r.prompt_tokens or 0) for r in ok) / interval,
        "goodput_rps": sum(slo.met_by(r) for r in records) / interval,
        "goodput_fraction": sum(slo.met_by(r) for r in records) / len(records),
    }
    for name, values in latencies_ms(records).items():
        summary.update(percentiles(values, name))
    return summary


@dataclass(frozen=True)
class Window:
    start: float
    """Window start, seconds since the epoch."""
    requests: int
    failed: int
    p95_ms: float
    """p95 e2e latency of the successful requests sent in this window (NaN if none)."""

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else float("nan")


def windows(records: Sequence[RequestRecord], t0: float, t1: float, width_s: float = 1.0) -> list[Window]:
    """Requests grouped by send time into [t0 + i*width, t0 + (i+1)*width) up to t1."""
    count = max(0, int(np.ceil((t1 - t0) / width_s)))
    buckets: list[list[RequestRecord]] = [[] for _ in range(count)]
    for record in records:
        index = int((record.start - t0) // width_s)
        if 0 <= index < count:
            buckets[index].append(record)
    result = []
    for i, bucket in enumerate(buckets):
        e2e = [r.e2e_s * 1000 for r in bucket if r.ok]
        result.append(Window(t0 + i * width_s, len(bucket), sum(not r.ok for r in bucket),
                             float(np.percentile(e2e, 95)) if e2e else float("nan")))
    return result


def healthy(window: Window, max_error_rate: float, max_p95_ms: float) -> bool:
    """A window with no requests is not healthy: silence after a kill is no evidence of recovery."""
    return window.requests > 0 and window.error_rate <= max_error_rate and window.p95_ms <= max_p95_ms


def time_to_recover(records: Sequence[RequestRecord], t_kill: float, t_end: float, *, consecutive: int,
                    max_error_rate: float, max_p95_ms: float, width_s: float = 1.0) -> float | None:
    """TTR in seconds, or None when no run of `consecutive` healthy windows starts before t_end."""
    series = windows(records, t_kill, t_end, width_s)
    for i in range(len(series) - consecutive + 1):
        if all(healthy(w, max_error_rate, max_p95_ms) for w in series[i:i + consecutive]):
            return i * width_s
    return None


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print("usage: python -m loadtests.metrics REQUEST_LOG.jsonl [...]", file=sys.stderr)
        return 2
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    print(json.dumps(summarize(read_records(paths)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
