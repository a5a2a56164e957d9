"""`monitoring`: the metrics the environment declares are really scraped, and they move while work is done.

Targets: the bundled server's `/metrics` (started here on 127.0.0.1 with one replica, unless `bundledServer` is
false) and every target declared in `targets` (DCGM exporter, node exporter, anything Prometheus scrapes: a URL,
e.g. the Service of the exporter on Kubernetes). Each target is scraped before and after a short, bounded load on
the bundled server (`requests` sequential completions) and parsed with the Prometheus text parser
(`prometheus_client.parser.text_string_to_metric_families`). The check fails, naming the target, when a target
cannot be scraped, when an expected family is absent, or when a family expected to move (request and token
counters) did not increase. The bundled server's request counter must have grown by exactly the requests sent.

Metrics: `targets`, `targets_down`, `families_missing`, `families_static`, `requests_sent`,
`request_counter_delta`, `request_counter_matches` (1 when the delta equals the requests sent), `scrape_ms.max`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult

BUNDLED_SERVER = "bundled-server"
# Families of workloads/serving/metrics.py (counter names without `_total`, as the parser names them).
BUNDLED_FAMILIES = ("dcforge_requests", "dcforge_request_seconds", "dcforge_time_to_first_token_seconds",
                    "dcforge_prompt_tokens", "dcforge_generated_tokens", "dcforge_batch_size",
                    "dcforge_forward_seconds", "dcforge_queue_depth", "dcforge_active_sequences")
BUNDLED_MOVING = ("dcforge_requests", "dcforge_prompt_tokens", "dcforge_generated_tokens", "dcforge_forward_seconds")
REQUEST_FAMILY, COMPLETIONS_ROUTE = "dcforge_requests", "/v1/completions"
# What each kind of exporter must expose when declared without an explicit list.
KIND_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dcgm-exporter": (("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED"), ()),
    "node-exporter": (("node_cpu_seconds", "node_memory_MemAvailable_bytes", "node_filesystem_avail_bytes"),
                      ("node_cpu_seconds",)),
    "custom": ((), ()),
}


class ScrapeTarget(CheckConfig):
    name: str = Field(pattern=r"^[a-z0-9][-a-z0-9.]*$")
    """How the target is named in the report and in failures."""
    url: str = Field(pattern=r"^https?://")
    """The /metrics URL (on Kubernetes: the exporter's Service, e.g. http://dcgm-exporter.gpu-operator:9400/metrics)."""
    kind: Literal["dcgm-exporter", "node-exporter", "custom"] = "custom"
    """Sets the default `families` and `moving` lists."""
    families: list[str] | None = None
    """Metric families that must be present (counters without `_total`); default from `kind`."""
    moving: list[str] | None = None
    """Families whose total must increase between the scrapes; default from `kind`."""

    def expected(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        families, moving = KIND_FAMILIES[self.kind]
        return (tuple(self.families) if self.families is not None else families,
                tuple(self.moving) if self.moving is not None else moving)


class MonitoringConfig(CheckConfig):
    bundled_server: bool = True
    """Start the bundled server (one replica) and scrape its /metrics; it also carries the load."""
    targets: list[ScrapeTarget] = Field(default_factory=list)
    """Further declared scrape targets."""
    requests: int = Field(default=12, ge=1, le=1000)
    """Completions sent between the two scrapes (sequential: bounded in time and count)."""
    max_tokens: int = Field(default=8, ge=1)
    """Tokens generated per request."""
    preset: str = "tiny"
    """Model preset served with random weights."""
    scrape_timeout_s: float = Field(default=10.0, gt=0)
    counter_settle_s: float = Field(default=3.0, ge=0)
    """How long the after-scrape may wait for the last responses to be counted."""

    @model_validator(mode="after")
    def _something_to_scrape(self) -> "MonitoringConfig":
        if not self.bundled_server and not self.targets:
            raise ValueError("nothing to scrape: bundledServer is false and no targets are declared")
        names = [t.name for t in self.targets] + ([BUNDLED_SERVER] if self.bundled_server else [])
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate target names: {', '.join(sorted(names))}")
        return self


@dataclass
class Scrape:
    target: str
    url: str
    families: dict[str, float] = field(default_factory=dict)
    """Family name -> total (counter: sum of `_total`; histogram/summary: sum of `_count`; gauge: sum)."""
    error: str = ""
    seconds: float = 0.0


def family_totals(text: str) -> dict[str, float]:
    """Each family's total in one exposition text (raises ValueError on text that is not Prometheus format)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        suffix = {"counter": "_total", "histogram": "_count", "summary": "_count"}.get(family.type, "")
        values = [s.value for s in family.samples if s.name == family.name + suffix]
        totals[family.name] = float(sum(values))
    return totals


def labelled_value(text: str, family: str, sample: str, labels: dict[str, str]) -> float:
    """Sum of the samples named `sample` of `family` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) if f.name == family for s in f.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def scrape(name: str, url: str, timeout_s: float, verify_tls: bool = True) -> tuple[Scrape, str]:
    """One scrape; `verify_tls` is off only for the bundled server's own self-signed certificate."""
    import httpx

    result = Scrape(name, url)
    started = time.monotonic()
    try:
        response = httpx.get(url, timeout=timeout_s, verify=verify_tls)
        response.raise_for_status()
        text = response.text
        result.families = family_totals(text)
    except httpx.HTTPError as error:
        result.error = f"{type(error).__name__}: {error}"
        text = ""
    except ValueError as error:
        result.error = f"not Prometheus text format: {error}"
        text = ""
    result.seconds = time.monotonic() - started
    return result, text


class MonitoringCheck:
    name = "monitoring"
    description = "Scrapes the declared metrics endpoints before and after a workload: families present, counters moving."
    Config = MonitoringConfig
    requires_declared_gpus = False  # telemetry flow is judged the same on a CPU node
    metrics = (
        MetricSpec("targets", "targets", None, "declared scrape targets, the bundled server included",
                   "how many metrics endpoints were judged"),
        MetricSpec("targets_down", "targets", "lower", "targets whose /metrics could not be scraped or parsed",
                   "monitoring blind spots: must be 0"),
        MetricSpec("families_missing", "families", "lower", "expected metric families absent after the workload",
                   "metrics a dashboard or alert would miss: must be 0"),
        MetricSpec("families_static", "families", "lower",
                   "families expected to move whose total did not increase between the scrapes",
                   "telemetry that is exported but not updated: must be 0"),
        MetricSpec("requests_sent", "requests", None, "sequential completions sent between the two scrapes",
                   "the workload the counters must reflect"),
        MetricSpec("request_counter_delta", "requests", None,
                   'dcforge_requests_total{route="/v1/completions",status="200"} after − before',
                   "requests the server's counter saw"),
        MetricSpec("request_counter_matches", "bool", "higher",
                   "1 when the request counter grew by exactly the requests sent",
                   "no request lost or double-counted by the telemetry"),
        MetricSpec("scrape_ms", "ms", "lower", "slowest scrape of any target", "scrape latency", stats=("max",)),
    )

    def run(self, ctx: CheckContext, config: MonitoringConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        if config.bundled_server:
            self._with_bundled_server(ctx, config, result)
        else:
            before = [scrape(t.name, t.url, config.scrape_timeout_s)[0] for t in config.targets]
            after = [scrape(t.name, t.url, config.scrape_timeout_s)[0] for t in config.targets]
            self._judge(config, result, before, after, {t.name: t.expected() for t in config.targets})
        return result

    def _with_bundled_server(self, ctx: CheckContext, config: MonitoringConfig, result: CheckResult) -> None:
        from dcforge.steps.serving.credentials import new_api_key, private_dir
        from dcforge.steps.serving.load import ServingSession
        from dcforge.steps.serving.server import LocalServer, send_completions
        from dcforge.steps.serving.settings import ServingLoadConfig, choose_model

        serving = ServingLoadConfig(replicas=1, model_source="random", preset=config.preset, warmup_per_replica=0,
                                    max_tokens=config.max_tokens)
        model = choose_model(ctx, serving)
        workdir = ctx.artefact_dir(self.name)
        api_key = new_api_key()
        with private_dir() as secrets_dir, LocalServer(serving, model, secrets_dir, workdir, api_key) as server:
            result.artefacts["server_log"] = ctx.relative(server.log_path)
            server.wait_ready(min(serving.ready_timeout_s, max(1.0, ctx.remaining_s())))
            targets = {BUNDLED_SERVER: f"{server.base_url}/metrics", **{t.name: t.url for t in config.targets}}
            expected = {BUNDLED_SERVER: (BUNDLED_FAMILIES, BUNDLED_MOVING),
                        **{t.name: t.expected() for t in config.targets}}
            before, texts_before = zip(*(scrape(n, u, config.scrape_timeout_s, n != BUNDLED_SERVER)
                                         for n, u in targets.items()))
            ctx.log(f"{config.requests} completions of {config.max_tokens} tokens between two scrapes")
            send_completions(server, api_key, ServingSession.served_name, config.requests, config.max_tokens)
            counted_before = labelled_value(texts_before[0], REQUEST_FAMILY, REQUEST_FAMILY + "_total",
                                            {"route": COMPLETIONS_ROUTE, "status": "200"})
            # A response reaches the client just before the server's counter is incremented: poll briefly.
            settle_until = time.monotonic() + config.counter_settle_s
            while True:
                after, texts_after = zip(*(scrape(n, u, config.scrape_timeout_s, n != BUNDLED_SERVER)
                                           for n, u in targets.items()))
                delta = labelled_value(texts_after[0], REQUEST_FAMILY, REQUEST_FAMILY + "_total",
                                       {"route": COMPLETIONS_ROUTE, "status": "200"}) - counted_before
                if delta >= config.requests or time.monotonic() > settle_until:
                    break
                time.sleep(0.1)
            (workdir / "metrics-before.txt").write_text(texts_before[0])
            (workdir / "metrics-after.txt").write_text(texts_after[0])
            result.artefacts["metrics_before"] = ctx.relative(workdir / "metrics-before.txt")
            result.artefacts["metrics_after"] = ctx.relative(workdir / "metrics-after.txt")
        result.add_metric("requests_sent", config.requests)
        result.add_metric("request_counter_delta", delta)
        result.add_metric("request_counter_matches", float(delta == config.requests))
        if delta != config.requests:
            result.fail(f"target {BUNDLED_SERVER}: {REQUEST_FAMILY} grew by {delta:g}, {config.requests} requests "
                        f"were sent")
        self._judge(config, result, list(before), list(after), expected)

    def _judge(self, config: MonitoringConfig, result: CheckResult, before: list[Scrape], after: list[Scrape],
               expected: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> None:
        down = missing = static = 0
        table = []
        for first, second in zip(before, after):
            families, moving = expected[first.target]
            row = {"target": first.target, "url": first.url, "families": len(second.families),
                   "error": first.error or second.error, "missing": [], "static": []}
            table.append(row)
            if row["error"]:
                down += 1
                result.fail(f"target {first.target} ({first.url}) cannot be scraped: {row['error']}")
                continue
            row["missing"] = [f for f in families if f not in second.families]
            row["static"] = [f for f in moving if f in second.families
                             and not second.families[f] > first.families.get(f, 0.0)]
            missing += len(row["missing"])
            static += len(row["static"])
            if row["missing"]:
                result.fail(f"target {first.target} ({first.url}) lacks {', '.join(row['missing'])}")
            if row["static"]:
                result.fail(f"target {first.target} ({first.url}): {', '.join(row['static'])} did not increase "
                            f"during the workload")
        result.add_metric("targets", len(before))
        result.add_metric("targets_down", down)
        result.add_metric("families_missing", missing)
        result.add_metric("families_static", static)
        result.add_metric("scrape_ms.max", 1000 * max(s.seconds for s in [*before, *after]))
        result.details["targets"] = table
