"""The statistics steps and checks share: exact percentiles, and the nodes far below the pool's median."""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def percentile(values: list[float], q: float) -> float:
    """Exact percentile with linear interpolation (numpy's default)."""
    import numpy

    return float(numpy.percentile(numpy.asarray(values, dtype=float), q))


def outliers(figures: Mapping[K, float], fraction: float) -> list[K]:
    """Nodes (indices or names) more than `fraction` below the median of the per-node figures."""
    if len(figures) < 2:
        return []
    median = statistics.median(figures.values())
    return sorted(node for node, value in figures.items() if value < (1 - fraction) * median)
