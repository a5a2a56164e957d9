"""LLM serving metrics from the per-request JSONL log (docs/metrics.md#inference), exact numpy statistics, under
vLLM `bench serve`'s names (`p95_ttft_ms`, `request_throughput`, ...): the one place a run's summary is computed.

    python -m loadtests.metrics requests-*.jsonl                     # summary of any run, e.g. against vLLM
    python -m loadtests.metrics --goodput "ttft:500 tpot:50" requests-*.jsonl
    python -m loadtests.metrics --export-aiperf profile_export.jsonl requests-*.jsonl   # AIPerf's field names

TTFT = first non-empty token - send. TPOT = (e2e - TTFT) / (output_tokens - 1). ITL = every gap between
consecutive non-empty chunks, pooled over requests. Goodput = requests that succeeded and met every per-request
SLO, per second. Warm-up requests (`RequestRecord.warmup`) are in the log but in no statistic. TTR after a kill at
t_kill = first t >= t_kill from which K consecutive 1-s windows have error rate <= SLO and p95 latency <= SLO,
minus t_kill.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from loadtests.llm_protocol import RequestRecord, read_records, time_per_output_token_s
except ImportError:  # run from inside loadtests/
    from llm_protocol import RequestRecord, read_records, time_per_output_token_s  # type: ignore[no-redef]

LATENCY_STATS = ("mean", "median", "std", "p50", "p90", "p95", "p99")
"""Statistics of every latency, as vLLM `bench serve` reports them (`mean_ttft_ms`, ..., `p99_ttft_ms`)."""
LENGTH_STATS = ("mean", "min", "max", "p50", "p90", "p99")
"""Statistics of the prompt and output lengths (`mean_input_tokens`, ...)."""
LATENCIES = ("ttft", "tpot", "itl", "e2el")
"""vLLM's latency names: time to first token, time per output token, inter-token latency, end-to-end latency."""
GOODPUT_FORMAT = "'ttft:MS tpot:MS e2el:MS' (vLLM's --goodput: any of the three, each at most once, MS > 0)"


@dataclass(frozen=True)
class RequestSlo:
    """Per-request limits a request must meet to count towards goodput; None disables one."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        ttft_ms = record.ttft_s * 1000 if record.ttft_s is not None else None
        tpot = time_per_output_token_s(record.e2e_s, record.ttft_s, record.output_tokens) \
            if record.ttft_s is not None else None
        checks = ((self.ttft_ms, ttft_ms), (self.tpot_ms, tpot * 1000 if tpot is not None else None),
                  (self.e2el_ms, record.e2e_s * 1000))
        return all(limit is None or (value is not None and value <= limit) for limit, value in checks)

    def describe(self) -> str:
        """The goodput setting back in vLLM's form ('' when no limit is set)."""
        return " ".join(f"{name}:{limit:g}" for name, limit in
                        (("ttft", self.ttft_ms), ("tpot", self.tpot_ms), ("e2el", self.e2el_ms)) if limit is not None)


_GOODPUT_PART = re.compile(r"^(ttft|tpot|e2el):(\d+(\.\d*)?|\.\d+)$")


def parse_goodput(text: str) -> RequestSlo:
    """`"ttft:500 tpot:50"` (vLLM's `--goodput`) -> RequestSlo; ValueError with the expected form otherwise."""
    if not isinstance(text, str) or not text.split():
        raise ValueError(f"expected {GOODPUT_FORMAT}, got {text!r}")
    limits: dict[str, float] = {}
    for part in text.split():
        match = _GOODPUT_PART.match(part)
        if match is None or float(match.group(2)) <= 0 or match.group(1) in limits:
            raise ValueError(f"expected {GOODPUT_FORMAT}, got {text!r} (at {part!r})")
        limits[match.group(1)] = float(match.group(2))
    return RequestSlo(ttft_ms=limits.get("ttft"), tpot_ms=limits.get("tpot"), e2el_ms=limits.get("e2el"))


def distribution(values: Sequence[float], name: str, stats: Sequence[str] = LATENCY_STATS) -> dict[str, float]:
    """`{stat}_{name}` for every statistic, exactly (numpy; percentiles by linear interpolation, std over the
    population as vLLM computes it); NaN when there are no values."""
    if len(values) == 0:
        return {f"{stat}_{name}": float("nan") for stat in stats}
    array = np.asarray(values, dtype=float)
    functions = {"mean": np.mean, "median": np.median, "std": np.std, "min": np.min, "max": np.max}

    def statistic(stat: str) -> float:
        return float(functions[stat](array) if stat in functions else np.percentile(array, float(stat[1:])))

    return {f"{stat}_{name}": statistic(stat) for stat in stats}


def measured(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """The measured set: every record except warm-up requests."""
    return [record for record in records if not record.warmup]


def latencies_ms(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    """TTFT, TPOT, ITL and e2e samples in ms from the successful requests, keyed `ttft_ms`, `tpot_ms`, `itl_ms`,
    `e2el_ms`."""
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
    return {"ttft_ms": ttft, "tpot_ms": tpot, "itl_ms": itl, "e2el_ms": e2e}


def prefix_reuse(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Prompt reuse as the client sees it, over the successful measured requests: `cached_prompt_fraction` =
    sum of the server's usage.prompt_tokens_details.cached_tokens / sum of their prompt tokens (requests whose
    answer reported cached tokens only; absent when none did); with multi-turn conversations, the mean TTFT of
    first turns (`ttft_first_turn_ms.mean`) and of later turns (`ttft_later_turns_ms.mean`)."""
    done = [record for record in measured(records) if record.ok]
    figures: dict[str, float] = {}
    reporting = [record for record in done if record.cached_tokens is not None and record.prompt_tokens]
    if reporting:
        figures["cached_prompt_fraction"] = sum(record.cached_tokens or 0 for record in reporting) / \
            sum(record.prompt_tokens or 0 for record in reporting)
    for key, turns in (("ttft_first_turn_ms.mean", lambda turn: turn == 1),
                       ("ttft_later_turns_ms.mean", lambda turn: turn > 1)):
        ttfts = [record.ttft_s * 1000 for record in done if turns(record.turn) and record.ttft_s is not None]
        if ttfts:
            figures[key] = float(np.mean(ttfts))
    return figures


def summarize(records: Sequence[RequestRecord], slo: RequestSlo = RequestSlo()) -> dict[str, float]:
    """Throughput, latency statistics, lengths, error rate and goodput of the measured requests (warm-up requests
    are dropped here, whoever calls), under vLLM `bench serve`'s names where vLLM has one.

    The measurement interval (`duration`) runs from the first send to the last answer of these requests.
    """
    records = measured(records)
    if not records:
        return {"requests": 0.0, "completed": 0.0, "failed": 0.0, "error_rate": float("nan")}
    interval = max(r.end for r in records) - min(r.start for r in records)
    interval = max(interval, 1e-9)
    ok = [r for r in records if r.ok]
    good = sum(slo.met_by(r) for r in records)
    input_tokens = sum(r.prompt_tokens or 0 for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    summary: dict[str, float] = {
        "requests": float(len(records)),
        "completed": float(len(ok)),
        "failed": float(len(records) - len(ok)),
        "error_rate": (len(records) - len(ok)) / len(records),
        "duration": interval,
        "request_throughput": len(ok) / interval,
        "output_throughput": output_tokens / interval,
        "total_token_throughput": (input_tokens + output_tokens) / interval,
        "request_goodput": good / interval,
        "goodput_fraction": good / len(records),
        "total_input_tokens": float(input_tokens),
        "total_output_tokens": float(output_tokens),
    }
    for name, values in latencies_ms(records).items():
        summary.update(distribution(values, name))
    summary.update(distribution([r.prompt_tokens for r in ok if r.prompt_tokens is not None], "input_tokens",
                                LENGTH_STATS))
    summary.update(distribution([r.output_tokens for r in ok], "output_tokens", LENGTH_STATS))
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
    parser = argparse.ArgumentParser(prog="python -m loadtests.metrics",
                                     description="Summary of per-request logs under vLLM's names (JSON on stdout).")
    parser.add_argument("logs", nargs="+", type=Path, metavar="REQUEST_LOG.jsonl")
    parser.add_argument("--goodput", default="", help=f"per-request SLOs of goodput, {GOODPUT_FORMAT}")
    parser.add_argument("--export-aiperf", type=Path, metavar="OUT.jsonl",
                        help="also write every record (warm-up included, marked) in AIPerf's profile_export.jsonl form")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.logs if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        slo = parse_goodput(args.goodput) if args.goodput else RequestSlo()
    except ValueError as error:
        print(f"error: --goodput: {error}", file=sys.stderr)
        return 2
    records = read_records(args.logs)
    if args.export_aiperf:
        try:
            from loadtests.aiperf_export import write_profile_export
        except ImportError:  # run from inside loadtests/
            from aiperf_export import write_profile_export  # type: ignore[no-redef]
        write_profile_export(records, args.export_aiperf)
    print(json.dumps(summarize(records, slo), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
