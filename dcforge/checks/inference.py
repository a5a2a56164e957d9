"""`inference`: what LLM users feel from the bundled server under Locust load -- throughput, TTFT/TPOT/ITL/e2e
statistics, lengths, error rate, goodput, under vLLM `bench serve`'s names -- plus endpoint compliance (401 without
a key, TLS >= 1.2 when TLS is on).

N replicas run on 127.0.0.1 under gunicorn; Locust runs headless in a subprocess with a hard timeout, warms every
replica up, and writes a per-request log (warm-up requests marked) from which every figure is computed exactly
(docs/metrics.md), also exported in AIPerf's per-request form. Every process is stopped at the end. On target
kubernetes the server and Locust run in the cluster instead (dcforge/placement/serving.py) and the same
figures are computed from the load pod's request log.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from dcforge.harness.check import CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.power import ENERGY_METRICS, OUTPUT_TOKENS_PER_JOULE, record_energy, sample_power
from dcforge.harness.repeats import add_repeat_statistics
from dcforge.harness.result import CheckResult
from dcforge.placement.scope import single_node
from dcforge.steps.serving.capacity import CAPACITY_METRICS, CapacitySettings, measure_capacity
from dcforge.steps.serving.load import RUN_METRICS, run_load, serving_session
from dcforge.steps.serving.load_metrics import LOAD_METRICS
from dcforge.steps.serving.plots import latency_plots
from dcforge.steps.serving.replicas import REPLICA_SHARE_METRICS, add_share_metrics, replica_shares
from dcforge.steps.serving.scraping import decode_batch_mean
from dcforge.steps.serving.server_metrics import SERVER_METRICS, report_server_metrics, scraper_for
from dcforge.steps.serving.settings import ServingLoadConfig
from dcforge.steps.serving.summary import add_summary_metrics, load_summary


class InferenceConfig(ServingLoadConfig):
    """Everything else is shared with inference_failover (see ServingLoadConfig)."""

    capacity: CapacitySettings | None = None
    """Sweeps and the SLA search after the main measurement (dcforge/steps/serving/capacity.py)."""
    repeats: int = Field(default=1, ge=1, le=20)
    """Measure the load run this many times on the same server; with 2 or more every load figure is the mean over
    the repeats with its Student-t 95 % interval as `<key>.ci95_low` / `<key>.ci95_high` (docs/metrics.md#repeats).
    Each repeat takes durationS and its own warm-up."""


class InferenceCheck:
    name = "inference"
    description = "OpenAI-compatible serving under Locust load: TTFT, TPOT, throughput, goodput, endpoint security."
    Config = InferenceConfig
    requires_declared_gpus = True
    on_pool = True  # target kubernetes: server and Locust run on the inference pool (dcforge/placement/serving.py)
    metrics = (
        *LOAD_METRICS,
        *RUN_METRICS,
        *REPLICA_SHARE_METRICS,
        *SERVER_METRICS,
        MetricSpec("endpoint_compliance_failures", "findings", "lower",
                   "dynamic endpoint rules that failed (API key required, TLS floor)",
                   "security of the serving endpoint: must be 0"),
        MetricSpec("decode_batch_mean", "sequences", "higher",
                   "mean sequences per decode forward pass (server histogram)",
                   "how well the server batches concurrent requests"),
        *ENERGY_METRICS,
        OUTPUT_TOKENS_PER_JOULE,
        *CAPACITY_METRICS,
    )

    def run(self, ctx: CheckContext, config: InferenceConfig) -> CheckResult:
        result = CheckResult(self.name, declared=self.metrics)
        return single_node(ctx, self, here=lambda: self.here(ctx, config, result),
                           pool=lambda: self.run_on_cluster(ctx, config, result))

    def here(self, ctx: CheckContext, config: InferenceConfig, result: CheckResult) -> CheckResult:
        from dcforge.compliance.endpoint import check_endpoint
        from dcforge.harness.slo import acceptance_slos

        with serving_session(ctx, config, self.name, result) as session:
            add_endpoint_findings(result, check_endpoint(session.server.base_url, session.served_name))
            scraper = scraper_for(session.server.base_url, config.server_metrics_interval_s)
            with sample_power() as power:
                records, t_start = run_load(ctx, config, session, result, scraper=scraper)
            repeated = [measure_repeat(ctx, config, session, self.metrics, index)
                        for index in range(2, config.repeats + 1)]
            batch = decode_batch_mean(session.server.scrape_metrics())
            summary = load_summary(config, records)
            capacity = None if config.capacity is None else measure_capacity(
                ctx, config, config.capacity, session, self.name, self.metrics,
                [slo for slo in acceptance_slos(ctx.env)[0] if slo.check == self.name], summary)
        if batch is not None:
            result.add_metric("decode_batch_mean", batch)
        add_summary_metrics(result, summary)
        record_energy(result, power, work=sum(r.output_tokens for r in records if r.ok),
                      work_metric=OUTPUT_TOKENS_PER_JOULE, per_joule=True)
        add_share_metrics(result, replica_shares(records, config.replicas), "all requests")
        result.plots.extend(latency_plots(records, t_start))
        report_server_metrics(result, scraper, records, t_start)
        add_repeat_statistics(result, repeated, per_repeat_details=("client_saturation",))
        log_summary(ctx, summary)
        if capacity is not None:
            capacity.report(result)
        return result

    def run_on_cluster(self, ctx: CheckContext, config: InferenceConfig, result: CheckResult) -> CheckResult:
        """Server and Locust in the cluster; the same figures and verdicts as on this machine, from the load pod's
        records (no energy: a restricted pod reads no power)."""
        from dcforge.placement.serving import run_load_on_cluster
        from dcforge.compliance.endpoint import EndpointFinding

        if config.repeats > 1:  # one load pod run; said, never silently dropped
            result.details["repeats"] = f"{config.repeats} asked, measured once: repeats run on this machine only"
            ctx.log(result.details["repeats"])
        ran = run_load_on_cluster(ctx, config, self.name, result)
        if ran is None:
            return result
        records, pod, _ = ran
        findings = [EndpointFinding(**finding) for finding in pod.endpoint_findings]
        add_endpoint_findings(result, findings)
        batch = decode_batch_mean(pod.server_metrics) if pod.server_metrics else None
        if batch is not None:
            result.add_metric("decode_batch_mean", batch)
        summary = load_summary(config, records)
        add_summary_metrics(result, summary)
        add_share_metrics(result, replica_shares(records, config.replicas), "all requests")
        result.plots.extend(latency_plots(records, min(record.start for record in records)))
        log_summary(ctx, summary)
        return result


def measure_repeat(ctx: CheckContext, config: InferenceConfig, session, declared, index: int) -> CheckResult:
    """Repeat `index` (2, 3, ...) of the load run on the running server, in its own artefact folder: a scratch
    result with the same load figures as the first run (dcforge.harness.repeats combines them)."""
    scratch = CheckResult(f"inference repeat {index}", declared=declared)
    workdir = session.workdir / f"repeat-{index}"
    workdir.mkdir(parents=True, exist_ok=True)
    scraper = scraper_for(session.server.base_url, config.server_metrics_interval_s)
    ctx.log(f"repeat {index} of {config.repeats}")
    records, t_start = run_load(ctx, config, replace(session, workdir=workdir), scratch, scraper=scraper)
    add_summary_metrics(scratch, load_summary(config, records))
    report_server_metrics(scratch, scraper, records, t_start)
    return scratch


def add_endpoint_findings(result: CheckResult, findings) -> None:
    """The dynamic endpoint rules: each finding in the details, the failures as the metric and as failures."""
    result.details["endpoint_compliance"] = [finding.__dict__ for finding in findings]
    result.add_metric("endpoint_compliance_failures", sum(not f.passed for f in findings))
    for finding in findings:
        if not finding.passed:
            result.fail(f"{finding.rule}: {finding.detail}")


def log_summary(ctx: CheckContext, summary: dict) -> None:
    ctx.log(f"{summary['request_throughput']:.1f} req/s, {summary['output_throughput']:.0f} output tokens/s, "
            f"TTFT p95 {summary['p95_ttft_ms']:.0f} ms, errors {summary['error_rate']:.2%}")
