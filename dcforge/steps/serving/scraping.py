"""Figures read from the server's own Prometheus endpoint."""

from __future__ import annotations

def decode_batch_mean(metrics_text: str) -> float | None:
    """Mean sequences per decode forward pass, from the server's Prometheus histogram."""
    total = count = None
    for line in metrics_text.splitlines():
        if line.startswith('dcforge_batch_size_sum{phase="decode"}'):
            total = float(line.split()[-1])
        elif line.startswith('dcforge_batch_size_count{phase="decode"}'):
            count = float(line.split()[-1])
    return total / count if total is not None and count else None
