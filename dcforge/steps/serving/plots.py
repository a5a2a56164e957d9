"""Plots of a load run: latency and request rate over time, TTFT/TPOT histograms."""

from __future__ import annotations

import dataclasses
from typing import Any

from dcforge.harness.result import Plot, Series
from workloads.records import RequestRecord

def latency_plots(records: list[RequestRecord], t0: float,
                  markers: list[dict[str, Any]] | None = None) -> list[Plot]:
    """Per-second p95 latency and RPS over time, and TTFT/TPOT histograms."""
    from loadtests.metrics import latencies_ms, windows

    t1 = max((r.end for r in records), default=t0)
    series = windows(records, t0, t1)
    x = [round(w.start - t0, 3) for w in series]
    ttft_by_window = windows([dataclasses.replace(r, e2e_s=r.ttft_s) for r in records if r.ttft_s is not None], t0, t1)
    samples = latencies_ms(records)
    return [
        Plot("Latency over time (requests by send second)", "seconds since load start", "p95 latency (ms)",
             [Series("e2e p95", x, [w.p95_ms for w in series]),
              Series("TTFT p95", x, [w.p95_ms for w in ttft_by_window])], markers=list(markers or [])),
        Plot("Requests per second", "seconds since load start", "requests/s",
             [Series("sent", x, [float(w.requests) for w in series]),
              Series("failed", x, [float(w.failed) for w in series])], markers=list(markers or [])),
        Plot("TTFT distribution", "TTFT (ms)", "requests", [Series("TTFT", [], samples["ttft_ms"])], kind="histogram"),
        Plot("TPOT distribution", "TPOT (ms)", "requests", [Series("TPOT", [], samples["tpot_ms"])], kind="histogram"),
    ]
