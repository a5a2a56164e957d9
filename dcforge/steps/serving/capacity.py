"""Capacity of the serving pool: load sweeps and the SLA search (the `capacity:` settings of `inference`).

A *point* is one full measurement at one load -- a Locust run of `pointDurationS` through the check's own load
path (dcforge.steps.serving.load) against the running server -- judged by the check's SLOs: the environment's
and its profile's SLOs of the `inference` check on the figures a load run reports, except floors on a throughput
(`request_throughput >= 3`: more load only makes them easier, so they say nothing about where the pool breaks). A
point where requests were still unanswered `stopGraceS` after its window does not hold either: the slowest requests
would be missing from its percentiles.

- Sweeps measure listed request rates (open loop, Poisson arrivals, gamma with `burstiness`) and concurrencies
  (closed-loop users), each point with its verdicts.
- The search finds the highest load at which every judged SLO holds: from `start`, double while the SLOs hold and
  halve while they break until a holding load `lo` and a breaking load `hi` bracket the capacity, then measure the
  geometric midpoint of [lo, hi] and keep the half that still brackets it. Stopping rule: stop when hi/lo <=
  `stopRatio` (concurrency: also when no whole number lies between them), or after `maxSteps` points, whichever
  comes first. The capacity is `lo`, the highest load measured at which every SLO held (0 when none did).

`search_capacity` is the search alone, a pure function over a `measure(load) -> outcome` callable, so its rule is
unit-tested without a server.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from dcforge.steps.serving.point_watch import EarlyStopSettings, PointWatch
from dcforge.harness.check import CheckConfig
from dcforge.harness.metrics import CI_BOUNDS, MetricSpec, find_spec
from dcforge.harness.result import Plot, Series

if TYPE_CHECKING:
    from dcforge.steps.serving.load import ServingSession
    from dcforge.steps.serving.settings import ServingLoadConfig
    from dcforge.harness.check import CheckContext
    from dcforge.harness.result import CheckResult
    from dcforge.harness.slo import Slo, SloResult

Mode = Literal["rate", "concurrency"]

MIN_POINT_REQUESTS = 10
"""A rate point must expect at least this many requests (rate x pointDurationS): fewer give no percentile."""
SPAWN_S = 0.5
"""Every Locust user of a point starts within this, so the point's load is on from its first second."""
POINT_OVERHEAD_S = 20.0
"""Time a point needs beyond its window and grace (Locust's start and exit); a point that no longer fits in the
check's time limit is not started."""
THROUGHPUT_KEY = "request_throughput"
"""The load summary's served request rate: the x axis of the throughput-latency plot, the default search start."""
PLOT_LATENCY_KEYS = ("p95_ttft_ms", "p95_e2el_ms")
"""Latency figures of the throughput-latency plot (the SLOs themselves are never named here)."""

CAPACITY_METRICS = (
    MetricSpec("capacity_rps", "req/s", "higher",
               "rate search: highest Poisson arrival rate measured at which every SLO held (the bracket's lower "
               "end, 0 if none held); concurrency search: served req/s measured at capacity_concurrency",
               "the request rate the serving pool sustains within its SLOs"),
    MetricSpec("capacity_concurrency", "users", "higher",
               "concurrency search: most closed-loop users measured at which every SLO held (0 if none held)",
               "how many concurrent clients the serving pool sustains within its SLOs"),
    MetricSpec("capacity_search_points", "points", None, "load points the search measured (bracketing + bisection)",
               "what the capacity figure cost: each point is a full load run"),
    MetricSpec("capacity_bracket_ratio", "", None,
               "lowest load at which an SLO broke / capacity (only when both were found)",
               "how tight the capacity is: 1.1 means the true capacity lies within 10 % above it"),
)


# --- Settings -----------------------------------------------------------------------------------------------------

class _Settings(BaseModel):
    model_config = CheckConfig.model_config


class SweepSettings(_Settings):
    """Loads measured one by one, each a full point with its verdicts."""

    rates: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(default_factory=list)
    """Open-loop request rates (req/s), Poisson arrivals (gamma with the check's `burstiness`)."""
    concurrencies: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    """Closed-loop user counts."""

    @model_validator(mode="after")
    def _some_points(self) -> "SweepSettings":
        if not self.rates and not self.concurrencies:
            raise ValueError("a sweep needs `rates`, `concurrencies` or both (each a list of loads)")
        return self


class SearchSettings(_Settings):
    """The SLA search: bracketing by doubling/halving, then bisection (see the module's stopping rule)."""

    mode: Mode = "rate"
    """rate: open-loop Poisson arrivals (capacity_rps); concurrency: closed-loop users (capacity_concurrency)."""
    start: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """First load tried; default: the main run's served req/s (rate) or its `users` (concurrency)."""
    lowest: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """No load below this is tried; default: MIN_POINT_REQUESTS / pointDurationS req/s (rate), 1 user."""
    highest: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """No load above this is tried (protects a shared cluster); default: none."""
    stop_ratio: float = Field(default=1.1, gt=1, le=4)
    """Stop once the bracket is this tight: hi / lo <= stopRatio."""
    max_steps: int = Field(default=6, ge=2, le=30)
    """Most points the search measures."""

    @model_validator(mode="after")
    def _consistent_bounds(self) -> "SearchSettings":
        if self.lowest is not None and self.highest is not None and self.lowest >= self.highest:
            raise ValueError(f"lowest ({self.lowest:g}) must be below highest ({self.highest:g})")
        if self.start is not None and not (self.lowest or 0) <= self.start <= (self.highest or math.inf):
            raise ValueError(f"start ({self.start:g}) must lie within [lowest, highest]")
        if self.mode == "concurrency":
            fractional = [name for name in ("start", "lowest", "highest")
                          if (value := getattr(self, name)) is not None and value != int(value)]
            if fractional:
                raise ValueError(f"a concurrency search counts users: {', '.join(fractional)} must be whole numbers")
        return self


class CapacitySettings(_Settings):
    """`capacity:` of the inference check: sweeps, the SLA search, or both, after the main measurement."""

    point_duration_s: float = Field(default=5.0, gt=0, le=600)
    """Load window of every sweep and search point."""
    stop_grace_s: float = Field(default=2.0, ge=0, le=60)
    """Requests in flight when a point's window ends may complete within this; any still unanswered after it
    make the point break (its slowest requests would be missing from its percentiles)."""
    sweep: SweepSettings | None = None
    search: SearchSettings | None = None
    early_stop: EarlyStopSettings = Field(default_factory=EarlyStopSettings)
    """A point that is plainly over-saturated (errors, latency or the server's queue growing without bound) stops
    before its window ends and breaks, its reason recorded (dcforge/steps/serving/point_watch.py)."""

    @field_validator("sweep")
    @classmethod
    def _rates_give_enough_requests(cls, sweep: SweepSettings | None, info: ValidationInfo) -> SweepSettings | None:
        duration = info.data.get("point_duration_s")
        if sweep is not None and duration is not None:
            too_low = [rate for rate in sweep.rates if rate * duration < MIN_POINT_REQUESTS]
            if too_low:
                raise ValueError(f"rates {', '.join(f'{r:g}' for r in too_low)} req/s give fewer than "
                                 f"{MIN_POINT_REQUESTS} requests in pointDurationS {duration:g} s")
        return sweep

    @field_validator("search")
    @classmethod
    def _lowest_gives_enough_requests(cls, search: SearchSettings | None,
                                      info: ValidationInfo) -> SearchSettings | None:
        duration = info.data.get("point_duration_s")
        if search is not None and duration is not None and search.mode == "rate" and search.lowest is not None \
                and search.lowest * duration < MIN_POINT_REQUESTS:
            raise ValueError(f"lowest {search.lowest:g} req/s gives fewer than {MIN_POINT_REQUESTS} requests in "
                             f"pointDurationS {duration:g} s")
        return search

    @model_validator(mode="after")
    def _something_to_do(self) -> "CapacitySettings":
        if self.sweep is None and self.search is None:
            raise ValueError("give `sweep`, `search` or both")
        return self


# --- The search, a pure function ------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class StoppingRule:
    ratio: float = 1.1
    """Stop once hi / lo <= ratio."""
    max_steps: int = 6
    lowest: float = 0.0
    highest: float = math.inf
    integer: bool = False
    """Loads are whole numbers (users): stop also when none lies between lo and hi."""

    def clamp(self, load: float) -> float:
        load = float(max(1, round(load))) if self.integer else load
        return min(max(load, self.lowest), self.highest)

    def describe(self) -> str:
        whole = "; or no whole number lies between them" if self.integer else ""
        return (f"double from the start while every SLO holds, halve while one breaks, then bisect [lo, hi] at its "
                f"geometric midpoint; stop when hi/lo <= {self.ratio:g}{whole}, or after {self.max_steps} points; "
                "capacity = lo, the highest load measured at which every SLO held")


class StopSearch(Exception):
    """Raised by `measure` to end the search early (e.g. the check's time limit); the message is the reason."""


@dataclass(frozen=True)
class SearchStep(Generic[T]):
    load: float
    phase: Literal["bracket", "bisect"]
    holds: bool
    outcome: T


@dataclass
class SearchResult(Generic[T]):
    steps: list[SearchStep[T]]
    lo: float | None
    """Highest load measured at which every SLO held."""
    hi: float | None
    """Lowest load measured at which an SLO broke."""
    stop_reason: str

    @property
    def capacity(self) -> float:
        return self.lo if self.lo is not None else 0.0

    @property
    def bracket_ratio(self) -> float | None:
        return self.hi / self.lo if self.lo is not None and self.hi is not None else None


def next_load(lo: float | None, hi: float | None, start: float, rule: StoppingRule) -> float | str:
    """The next load to measure given the bracket so far, or the reason the search is over."""
    if lo is None and hi is None:
        return rule.clamp(start)
    if hi is None:
        assert lo is not None
        return f"every SLO held up to the highest load allowed ({lo:g})" if lo >= rule.highest else rule.clamp(2 * lo)
    if lo is None:
        return f"an SLO broke even at the lowest load allowed ({hi:g})" if hi <= rule.lowest else rule.clamp(hi / 2)
    if hi / lo <= rule.ratio:
        return f"bracket [{lo:g}, {hi:g}] within the stop ratio: {hi / lo:.3g} <= {rule.ratio:g}"
    if rule.integer:
        if hi - lo <= 1:
            return f"no whole number between {lo:g} and {hi:g}"
        return float(min(hi - 1, max(lo + 1, round(math.sqrt(lo * hi)))))
    return math.sqrt(lo * hi)


def search_capacity(measure: Callable[[float], T], holds: Callable[[T], bool], start: float,
                    rule: StoppingRule) -> SearchResult[T]:
    """The highest load at which `holds(measure(load))`, by bracketing then bisection (`StoppingRule`). Assumes
    that a load above one that broke would break too; every point measured is kept, in order."""
    steps: list[SearchStep[T]] = []
    lo: float | None = None
    hi: float | None = None
    while True:
        load = next_load(lo, hi, start, rule)
        if isinstance(load, str):
            return SearchResult(steps, lo, hi, load)
        if len(steps) >= rule.max_steps:
            return SearchResult(steps, lo, hi, f"maxSteps: {rule.max_steps} points measured")
        phase: Literal["bracket", "bisect"] = "bisect" if lo is not None and hi is not None else "bracket"
        try:
            outcome = measure(load)
        except StopSearch as stop:
            return SearchResult(steps, lo, hi, str(stop))
        ok = holds(outcome)
        steps.append(SearchStep(load, phase, ok, outcome))
        if ok:
            lo = load if lo is None else max(lo, load)
        else:
            hi = load if hi is None else min(hi, load)


# --- Measuring a point ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadPoint:
    mode: Mode
    load: float
    """req/s (rate) or users (concurrency)."""

    @property
    def label(self) -> str:
        return f"{self.load:g} req/s" if self.mode == "rate" else f"{int(self.load)} users"


@dataclass
class PointOutcome:
    point: LoadPoint
    verdicts: list["SloResult"]
    figures: dict[str, float]
    problems: list[str] = field(default_factory=list)
    """Reasons besides the SLOs that the point breaks (requests abandoned at stop, stopped early, client
    saturated)."""
    arrival_model: str = ""
    request_log: str = ""
    early_stop: str = ""
    """Why the point stopped before its window ended ("" when it ran to the end)."""
    client_saturation: list[str] | None = None
    """What saturated the load generator (empty: nothing; None: not known). A saturated point is invalid."""

    @property
    def holds(self) -> bool:
        return not self.problems and all(verdict.verdict == "pass" for verdict in self.verdicts)

    def broken(self) -> list[str]:
        return [*(f"{v.metric} {v.reason or v.verdict}" for v in self.verdicts if v.verdict != "pass"),
                *self.problems]

    def to_dict(self) -> dict[str, Any]:
        load_key = "rate_rps" if self.point.mode == "rate" else "users"
        return {"load": self.point.label, load_key: self.point.load, "holds": self.holds, "broken": self.broken(),
                "arrivals": self.arrival_model,
                "verdicts": [{"slo": f"{v.metric} {v.expression}", "value": v.value, "verdict": v.verdict}
                             for v in self.verdicts],
                "figures": {key: float(f"{value:.4g}") for key, value in self.figures.items()},
                "early_stop": self.early_stop or "none: the point ran its whole window",
                "client_saturation": "unknown" if self.client_saturation is None
                else self.client_saturation or "not saturated",
                "valid": not self.client_saturation,
                "request_log": self.request_log}


def is_throughput_floor(slo: "Slo", unit: str) -> bool:
    """A floor on a per-second figure: more offered load only makes it easier to meet."""
    return slo.op in (">", ">=") and unit.endswith("/s")


def point_slos(slos: list["Slo"], point_specs: tuple[MetricSpec, ...]) -> tuple[list["Slo"], list[dict[str, str]]]:
    """The SLOs that judge a point (on a figure a load run reports, not a throughput floor), and the others with why
    they do not."""
    judged, not_judged = [], []
    for slo in slos:
        spec = find_spec(point_specs, slo.metric_name)
        if spec is None:
            not_judged.append({"slo": f"{slo.metric} {slo.expression}", "why": "not a figure of a load run"})
        elif slo.metric_name.rpartition(".")[2] in CI_BOUNDS:
            not_judged.append({"slo": f"{slo.metric} {slo.expression}",
                               "why": "a confidence bound of repeats: a load point is measured once"})
        elif is_throughput_floor(slo, spec.unit):
            not_judged.append({"slo": f"{slo.metric} {slo.expression}",
                               "why": "a throughput floor: more load only makes it easier to meet"})
        else:
            judged.append(slo)
    return judged, not_judged


def point_config(config: "ServingLoadConfig", settings: CapacitySettings, point: LoadPoint) -> "ServingLoadConfig":
    """The check's load settings for one point: its window, grace and load; every user starts within SPAWN_S."""
    # No warm-up per point: the main measurement has already paid every replica's first-request costs.
    update: dict[str, Any] = {"duration_s": settings.point_duration_s, "stop_grace_s": settings.stop_grace_s,
                              "warmup_per_replica": 0}
    if point.mode == "rate":  # open loop: single-turn requests (a conversation waits for its answers)
        update.update(arrival="poisson", rate=point.load, spawn_rate=config.users / SPAWN_S, turns=1)
    else:
        update.update(arrival="closed", users=int(point.load), spawn_rate=point.load / SPAWN_S)
    return config.model_copy(update=update)


class PointRunner:
    """Measures points against a running serving session, each in its own artefact directory."""

    def __init__(self, ctx: "CheckContext", config: "ServingLoadConfig", settings: CapacitySettings,
                 session: "ServingSession", check_name: str, declared: tuple[MetricSpec, ...], slos: list["Slo"]):
        self.ctx, self.config, self.settings, self.session = ctx, config, settings, session
        self.check_name, self.declared, self.slos = check_name, declared, slos
        self.measured = 0

    def measure(self, point: LoadPoint, phase: str) -> PointOutcome:
        from dcforge.steps.serving.load import run_load
        from dcforge.steps.serving.summary import add_summary_metrics, load_summary
        from dcforge.harness.result import CheckResult
        from dcforge.harness.slo import evaluate

        needed = self.settings.point_duration_s + self.settings.stop_grace_s + POINT_OVERHEAD_S
        if self.ctx.remaining_s() < needed:
            raise StopSearch(f"time limit: {self.ctx.remaining_s():.0f} s left of the check's limit, a point needs "
                             f"{needed:.0f} s")
        self.measured += 1
        load_config = point_config(self.config, self.settings, point)
        workdir = self.session.workdir / "capacity" / f"{self.measured:02d}-{phase}-{point.mode}-{point.load:g}"
        scratch = CheckResult(self.check_name, declared=self.declared)
        early = self.settings.early_stop
        watch = PointWatch(self.session.server.base_url, early.limits()) if early.enabled else None
        try:
            records, _ = run_load(self.ctx, load_config, dataclasses.replace(self.session, workdir=workdir), scratch,
                                  watch=watch)
        except RuntimeError as error:  # Locust failed or logged nothing: the point breaks, the others still count
            self.ctx.log(f"capacity {phase} point {self.measured}: {point.label} -> load run failed: {error}")
            return PointOutcome(point, [], {}, [f"load run failed: {error}"])
        summary = load_summary(load_config, records)
        add_summary_metrics(scratch, summary)
        # An SLO on a figure this run did not report (replicas_ready_s belongs to the server's start) is left out.
        verdicts = [evaluate(slo, {self.check_name: scratch}) for slo in self.slos
                    if slo.metric_name in scratch.metrics]
        abandoned = scratch.metrics.get("abandoned_at_stop")
        problems = [f"{abandoned.value:g} requests still unanswered {self.settings.stop_grace_s:g} s after the "
                    "window"] if abandoned is not None and abandoned.value > 0 else []
        if watch is not None and watch.stop_reason:
            problems.append(f"stopped early: {watch.stop_reason}")
        client = scratch.details.get("client_saturation")
        client = client if isinstance(client, list) else ([] if client == "not saturated" else None)
        if client:  # the client, not the server, was measured: the point is invalid, never the capacity
            problems.append(f"client saturated (point invalid): {'; '.join(client)}")
        figures = {key: metric.value for key, metric in scratch.metrics.items()}
        outcome = PointOutcome(point, verdicts, figures, problems, scratch.details.get("arrival_model", ""),
                               scratch.artefacts.get("request_log", ""), watch.stop_reason if watch else "", client)
        self.ctx.log(f"capacity {phase} point {self.measured}: {point.label} -> "
                     + ("every SLO holds" if outcome.holds else "; ".join(outcome.broken())))
        return outcome


# --- The capacity step of the check -------------------------------------------------------------------------------

@dataclass
class CapacityReport:
    settings: CapacitySettings
    judged: list[str]
    not_judged: list[dict[str, str]]
    sweeps: dict[str, list[PointOutcome]]
    sweep_stop: str
    search: SearchResult[PointOutcome] | None
    search_start: float | None
    rule: StoppingRule | None
    elapsed_s: float
    problem: str = ""
    """Why the search could not run (reported as a failure of the check)."""

    def report(self, result: "CheckResult") -> None:
        """Metrics, details (every point) and plots into the check's result."""
        details: dict[str, Any] = {"point_duration_s": self.settings.point_duration_s,
                                   "stop_grace_s": self.settings.stop_grace_s, "elapsed_s": round(self.elapsed_s, 1),
                                   "judged_by": self.judged, "not_judged": self.not_judged}
        if self.sweeps:
            details["sweeps"] = {mode: [o.to_dict() for o in outcomes] for mode, outcomes in self.sweeps.items()}
            if self.sweep_stop:
                details["sweep_stopped"] = self.sweep_stop
        if self.problem:
            result.fail(self.problem)
            details["search"] = {"not_run": self.problem}
        elif self.search is not None and self.rule is not None and self.settings.search is not None:
            details["search"] = self._search_details(result, self.settings.search.mode, self.search, self.rule)
        result.details["capacity"] = details
        result.plots.extend(self.plots())

    def _search_details(self, result: "CheckResult", mode: Mode, search: SearchResult[PointOutcome],
                        rule: StoppingRule) -> dict[str, Any]:
        if mode == "rate":
            result.add_metric("capacity_rps", search.capacity)
        else:
            result.add_metric("capacity_concurrency", search.capacity)
            at_capacity = next((s.outcome for s in search.steps if s.load == search.lo), None)
            result.add_metric("capacity_rps", at_capacity.figures.get(THROUGHPUT_KEY, 0.0) if at_capacity else 0.0,
                              context=f"served at {int(search.capacity)} users")
        result.add_metric("capacity_search_points", len(search.steps))
        if search.bracket_ratio is not None:
            result.add_metric("capacity_bracket_ratio", search.bracket_ratio)
        return {"mode": mode, "start": self.search_start, "stopping_rule": rule.describe(),
                "stop_reason": search.stop_reason, "capacity": search.capacity, "bracket": [search.lo, search.hi],
                "points": [{"step": i, "phase": step.phase, **step.outcome.to_dict()}
                           for i, step in enumerate(search.steps, 1)]}

    def plots(self) -> list[Plot]:
        groups = [(f"{mode} sweep", outcomes) for mode, outcomes in self.sweeps.items()]
        if self.search is not None and self.settings.search is not None:
            groups.append((f"{self.settings.search.mode} search", [step.outcome for step in self.search.steps]))
        series = []
        for name, outcomes in groups:
            ordered = sorted(outcomes, key=lambda outcome: outcome.point.load)
            for key in PLOT_LATENCY_KEYS:
                series.append(Series(f"{name}: {key}", [o.figures.get(THROUGHPUT_KEY, math.nan) for o in ordered],
                                     [o.figures.get(key, math.nan) for o in ordered]))
        plots = [Plot("Throughput vs latency (capacity points, by offered load)", "served requests/s",
                      "latency (ms)", series)] if series else []
        if self.search is not None and self.search.steps:
            steps = list(enumerate(self.search.steps, 1))
            plots.append(Plot("Capacity search: every point tried", "step", "offered load (req/s or users)",
                              [Series(label, [float(i) for i, s in steps if s.holds is ok],
                                      [s.load for _, s in steps if s.holds is ok])
                               for label, ok in (("every SLO held", True), ("an SLO broke", False))],
                              kind="scatter"))
        return plots


def measure_capacity(ctx: "CheckContext", config: "ServingLoadConfig", settings: CapacitySettings,
                     session: "ServingSession", check_name: str, declared: tuple[MetricSpec, ...],
                     slos: list["Slo"], main_summary: dict[str, float]) -> CapacityReport:
    """Run the configured sweeps, then the search, against `session`; `slos` are the check's SLOs, of which those on
    a load run's figures judge each point (`point_slos`). `main_summary` (the check's main run) gives the default
    start of a rate search."""
    from dcforge.steps.serving.load_metrics import LOAD_METRICS
    from dcforge.steps.serving.load import RUN_METRICS

    started = time.monotonic()
    judged, not_judged = point_slos(slos, (*LOAD_METRICS, *RUN_METRICS))
    runner = PointRunner(ctx, config, settings, session, check_name, declared, judged)
    sweeps: dict[str, list[PointOutcome]] = {}
    sweep_stop = ""
    if settings.sweep is not None:
        try:
            for mode, loads in (("rate", settings.sweep.rates), ("concurrency", settings.sweep.concurrencies)):
                for load in loads:
                    sweeps.setdefault(mode, []).append(runner.measure(LoadPoint(mode, float(load)), "sweep"))
        except StopSearch as stop:
            sweep_stop = str(stop)
    report = CapacityReport(settings, [f"{slo.metric} {slo.expression}" for slo in judged], not_judged, sweeps,
                            sweep_stop, None, None, None, 0.0)
    search = settings.search
    if search is not None and not judged:
        report.problem = (f"capacity.search: no SLO of the {check_name} check judges a load point; give one on a "
                          f"latency or error figure (e.g. {check_name}.{PLOT_LATENCY_KEYS[0]}: \"< 500\")")
    elif search is not None:
        rate = search.mode == "rate"
        lowest = search.lowest or (MIN_POINT_REQUESTS / settings.point_duration_s if rate else 1.0)
        report.rule = StoppingRule(search.stop_ratio, search.max_steps, lowest, search.highest or math.inf,
                                   integer=not rate)
        served = main_summary.get(THROUGHPUT_KEY, math.nan)
        if not rate:
            default_start = float(config.users)
        else:  # the rate the main run served, to 3 digits (the lowest allowed when it served nothing)
            default_start = float(f"{served:.3g}") if served > 0 else lowest
        report.search_start = search.start or default_start
        report.search = search_capacity(lambda load: runner.measure(LoadPoint(search.mode, load), "search"),
                                        lambda outcome: outcome.holds, report.search_start, report.rule)
    report.elapsed_s = time.monotonic() - started
    return report
