"""Compare a run against a baseline report: flag every metric more than `tolerance` worse, direction-aware."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from dcforge.errors import ConfigError

DEFAULT_TOLERANCE = 0.05


@dataclass(frozen=True)
class Comparison:
    metric: str
    """`<check>.<metric>`."""
    baseline: float
    current: float
    change: float
    """Relative change (current - baseline) / |baseline|; positive means the number went up."""
    better: str
    regressed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def load_baseline(path: Path, what: str = "baseline") -> dict:
    """A dcforge report.json; `what` names its role in the error messages ("baseline", "report")."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(path, None, f"cannot read {what}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}", None, f"{what} is not JSON: {error.msg}") from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("dcforge.report/"):
        raise ConfigError(path, "schema", "not a dcforge report.json (expected schema 'dcforge.report/v1')")
    return data


def metric_values(report: dict) -> dict[str, tuple[float, str | None]]:
    """`check.metric` -> (value, better) for every metric of every check that did not error or skip."""
    values = {}
    for check in report.get("checks", []):
        if check.get("status") not in ("pass", "fail"):
            continue
        for name, metric in check.get("metrics", {}).items():
            values[f"{check['name']}.{name}"] = (float(metric["value"]), metric.get("better"))
    return values


def former_keys(report: dict) -> dict[str, str]:
    """`check.metric` -> the `check.metric` it was reported under before a rename (from each metric's aliases)."""
    from dcforge.harness.metrics import FORMER_NAME

    return {f"{check['name']}.{name}": f"{check['name']}.{metric['aliases'][FORMER_NAME]}"
            for check in report.get("checks", []) for name, metric in check.get("metrics", {}).items()
            if FORMER_NAME in (metric.get("aliases") or {})}


def compare(current: dict, baseline: dict, tolerance: float = DEFAULT_TOLERANCE) -> list[Comparison]:
    """Every directional metric present in both reports, with `regressed` set when worse by more than tolerance.
    A baseline written before a metric was renamed is compared under the metric's former name."""
    now, before = metric_values(current), metric_values(baseline)
    for key, former in former_keys(current).items():
        if key not in before and former in before:
            before[key] = before[former]
    comparisons = []
    for key in sorted(set(now) & set(before)):
        value, better = now[key]
        base, _ = before[key]
        if better not in ("higher", "lower"):
            continue
        if base == 0:
            change = 0.0 if value == 0 else float("inf") if value > 0 else float("-inf")
        else:
            change = (value - base) / abs(base)
        worse = -change if better == "higher" else change
        comparisons.append(Comparison(key, base, value, change, better, worse > tolerance))
    return comparisons
