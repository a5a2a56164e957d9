"""The `dcforge` command line: validate, accept, report, metrics (and synth, up, preview, provision).

Exit codes: 0 success, 1 an acceptance check or SLO failed, 2 bad input (one clear line, no traceback),
128 + signal number when `accept` is interrupted (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dcforge import __version__
from dcforge.errors import DcforgeError

app = typer.Typer(
    help="Declarative AI GPU data centers: one spec per environment, provisioned and then proven by acceptance "
         "benchmarks judged against that environment's SLOs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

EnvOption = typer.Option("local", "--env", "-e", help="Environment name: reads stacks/Pulumi.<env>.yaml.")
EnvFileOption = typer.Option(None, "--env-file", help="Read this environment file instead of stacks/Pulumi.<env>.yaml.",
                             exists=False, dir_okay=False)


def _load(env: str, env_file: Optional[Path]):
    """The environment, its acceptance checks and their settings judged against the bundled checks."""
    from dcforge.checks import CATALOG
    from dcforge.spec import load_environment

    return load_environment(None if env_file else env, path=env_file, checks=CATALOG)


def _split(values: Optional[list[str]]) -> list[str]:
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


@app.callback()
def _version(version: bool = typer.Option(False, "--version", help="Print the dcforge version and exit.")) -> None:
    if version:
        console.print(f"dcforge {__version__}")
        raise typer.Exit(0)


@app.command()
def validate(env: str = EnvOption, env_file: Optional[Path] = EnvFileOption) -> None:
    """Validate an environment: the spec (schema, cross-field rules, driver/CUDA/NCCL/fabric-manager table), then
    every manifest it synthesizes (Kubernetes OpenAPI schema + compliance rules). Exit 2 on a bad spec, 1 when the
    manifests break a schema or a compliance rule."""
    from dcforge.synth import summary_line, verify_environment

    loaded = _load(env, env_file)
    spec = loaded.spec
    console.print(f"[green]✓[/] {loaded.path}: environment [bold]{spec.name}[/] is valid — "
                  f"{len(spec.gpu_pools)} GPU pools, {spec.total_gpus} GPUs, storage {spec.storage.backend}, "
                  f"driver {spec.versions.driver} / CUDA {spec.versions.cuda} / NCCL {spec.versions.nccl}, "
                  f"{len(spec.acceptance.checks)} acceptance checks, {len(spec.acceptance.slos)} SLOs")
    verification = verify_environment(spec)
    mark = "[green]✓[/]" if verification.ok else "[red]✗[/]"
    console.print(f"{mark} manifests: {escape(summary_line(verification))}", highlight=False)
    for line in verification.lines():
        errors.print(f"error: {line}", markup=False, highlight=False)
    if not verification.ok:
        raise typer.Exit(1)


KubeconfigOption = typer.Option(None, "--kubeconfig", dir_okay=False, help="Target kubernetes: the cluster's "
                                "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the in-cluster account).")
ContextOption = typer.Option(None, "--context", help="Target kubernetes: the kubeconfig context (default: its "
                             "current context).")


def _cluster_access(loaded, kubeconfig: Optional[Path], context: Optional[str]):
    """Where target kubernetes runs the workloads; bad input (exit 2) before any check runs: no acceptance image,
    or a kubeconfig file that does not exist."""
    from dcforge.placement.targets import IMAGE_MISSING
    from dcforge.errors import ConfigError
    from dcforge.harness.check import ClusterAccess

    if loaded.spec.acceptance.target == "kubernetes" and not loaded.spec.acceptance.image:
        raise ConfigError(loaded.path, "dcforge:acceptance.image", IMAGE_MISSING)
    return ClusterAccess(_kubeconfig_file(kubeconfig), context)


def _kubeconfig_file(kubeconfig: Optional[Path]) -> Optional[str]:
    if kubeconfig is not None and not kubeconfig.is_file():
        raise DcforgeError(f"--kubeconfig {kubeconfig}: no such file")
    return str(kubeconfig) if kubeconfig is not None else None


def _sweep_run(state) -> None:
    """Target kubernetes: delete whatever of this run is still labelled on the cluster (each execution deletes its
    own objects; this catches what an execution could not, e.g. when interrupted twice). Never raises."""
    if state.env.spec.acceptance.target != "kubernetes":
        return
    from dcforge.executors.base import ExecutorError
    from dcforge.executors.kubernetes import clean_runs, client_from_kubeconfig
    from dcforge.harness.check import report_run_id

    try:
        api_client = client_from_kubeconfig(state.cluster.kubeconfig, state.cluster.context)
        _, leftovers = clean_runs(state.env.spec, api_client, run_id=report_run_id(state.env.spec.name,
                                                                                   state.report_dir))
    except ExecutorError as error:
        errors.print(f"warning: could not check the cluster for this run's objects: {error}", markup=False,
                     highlight=False)
        return
    if leftovers:
        errors.print(f"warning: left on the cluster (remove with `dcforge clean`): {', '.join(leftovers)}",
                     markup=False, highlight=False)


DEPLOY_RECORD = "deploy"
"""Key of the `dcforge up` record that `accept` writes as the report's deploy section (in the click context obj)."""


@app.command()
def accept(
    ctx: typer.Context,
    env: str = EnvOption,
    env_file: Optional[Path] = EnvFileOption,
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only these checks (repeat or comma-separate)."),
    skip: Optional[list[str]] = typer.Option(None, "--skip", help="Skip these checks (repeat or comma-separate)."),
    reports: Path = typer.Option(Path("reports"), "--reports", help="Root folder of reports/<env>/<UTC time>/."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="A previous report.json to compare against."),
    tolerance: float = typer.Option(0.05, "--tolerance", min=0.0, help="Relative change that counts as a regression."),
    fail_on_regression: bool = typer.Option(False, "--fail-on-regression", help="Exit 1 when the baseline shows a regression."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Ed25519 private key (PEM): write "
                                            "report.json.sig, a detached signature over the final report.json."),
    kubeconfig: Optional[Path] = KubeconfigOption,
    context: Optional[str] = ContextOption,
    taint_failed: bool = typer.Option(False, "--taint-failed", help="Target kubernetes: taint nodes that failed a "
                                      "node-level check (dcforge.io/acceptance=failed:NoSchedule), untaint passing ones."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --taint-failed/--mark-nodes: print what it would do, "
                                 "change nothing."),
    mark_nodes: bool = typer.Option(False, "--mark-nodes", help="Target kubernetes: set the DcforgeNodeHealthy "
                                    "condition, the recommended-action annotation and an Event per failed node."),
    pushgateway: Optional[str] = typer.Option(None, "--pushgateway", help="Push the run's metrics to this "
                                              "Pushgateway URL (default: dcforge:acceptance.metrics.pushgateway)."),
    metrics_textfile: Optional[Path] = typer.Option(None, "--metrics-textfile", help="Write the run's metrics to "
                                                    "this node-exporter *.prom file (default: "
                                                    "acceptance.metrics.textfile)."),
    archive_reports: Optional[str] = typer.Option(None, "--archive-reports", help="NAMESPACE/SCHEDULE: keep the "
                                                  "report in a ConfigMap there, the last acceptance.keepReports "
                                                  "(what the scheduled CronJob passes)."),
) -> None:
    """Run the environment's acceptance checks, judge its SLOs, write JSON + JUnit + HTML reports.

    Checks: system (inventory), gpu_health (NVML, XIDs, DCGM), gpu_bandwidth (copies, GEMM), train (torchrun GPT:
    tokens/s, MFU), allreduce (busbw sweep), checkpoint (DCP save/load GB/s, integrity), checkpoint_backup (backup,
    restore, verify, resume), train_failover (a rank dies; resume), compression (int8 vs fp32), compliance
    (manifest rules), monitoring (metrics scraped, counters move), inference (OpenAI-compatible server under
    Locust: TTFT/TPOT/goodput), inference_failover (a replica is SIGKILLed). Energy (NVML/RAPL) is sampled during
    train, allreduce and inference where sensors exist.
    Exit 0 all passed, 1 a check or SLO failed or errored, 2 bad input, 128 + signal when interrupted by SIGINT
    (130), SIGTERM (143) or SIGHUP (129): the report keeps every result measured so far, no child is left running.
    """
    from dcforge.harness.runner import RunState, select_checks, utc_now
    from dcforge.remediation import check_flags as check_remediation_flags
    from dcforge.report.baseline import load_baseline
    from dcforge.report.provenance import load_private_key, sign_report

    loaded = _load(env, env_file)
    signing_key = load_private_key(sign_key) if sign_key else None  # a bad key is bad input before any check runs
    check_remediation_flags(loaded.spec, taint_failed, dry_run, mark_nodes)
    metrics_to = _metrics_destinations(loaded, pushgateway, metrics_textfile)
    if archive_reports is not None and not re.match(r"^[a-z0-9-]+/[a-z0-9-]+$", archive_reports):
        raise DcforgeError(f"--archive-reports {archive_reports}: expected NAMESPACE/SCHEDULE, e.g. acceptance/hourly")
    selected = select_checks(loaded.spec.acceptance.checks, _split(only), _split(skip))
    baseline_report = load_baseline(baseline) if baseline else None
    cluster = _cluster_access(loaded, kubeconfig, context)
    report_dir = _new_report_dir(reports, loaded.spec.name)
    # checks hand artefact paths to child processes with other working directories: keep them absolute
    state = RunState(env=loaded, report_dir=report_dir.resolve(), selected=selected, started_at=utc_now(),
                     cluster=cluster, deploy=(ctx.obj or {}).get(DEPLOY_RECORD))
    writer = ReportWriter(report_dir, baseline_report, baseline, tolerance)
    console.print(f"dcforge accept: environment [bold]{loaded.spec.name}[/] ({loaded.path}), "
                  f"{len(selected)} checks → {report_dir}")
    try:
        _run_with_progress(state, writer)
    finally:
        _sweep_run(state)

    _print_summary(writer.latest)
    remediated = _remediate(report_dir, writer.latest, dry_run, cluster, taint_failed, mark_nodes) \
        if taint_failed or mark_nodes else {}
    _publish_metrics(writer.latest, *metrics_to)
    archived = _archive(writer.latest, archive_reports, loaded.spec.acceptance.keep_reports, cluster) \
        if archive_reports else True
    console.print(f"Report: {report_dir / 'report.html'}  (also report.json, junit.xml)")
    if signing_key is not None:
        console.print(f"Signed: {sign_report(report_dir, signing_key)}")
    code = _accept_exit_code(state, writer.latest, fail_on_regression)
    raise typer.Exit(max(code, 1) if remediated.get("errors") or not archived else code)


def _remediate(report_dir: Path, report: dict, dry_run: bool, cluster, taint: bool, mark: bool) -> dict:
    """`--taint-failed`/`--mark-nodes`: taints, conditions and events from the report's node rows
    (dcforge/remediation.py, dcforge/node_health.py)."""
    from dcforge.remediation import apply_to_report
    from dcforge.report.nodes import summary_line

    done = apply_to_report(report_dir, report, dry_run, cluster=cluster, taint=taint, mark=mark)
    console.print(escape(summary_line(done)), highlight=False)
    for line in done.get("marks", []):
        console.print(escape(line), highlight=False)
    for line in done["errors"]:
        errors.print(f"error: {line}", markup=False, highlight=False)
    return done


def _metrics_destinations(loaded, pushgateway: str | None, textfile: Path | None) -> tuple[Path | None, str | None]:
    """The flags win over dcforge:acceptance.metrics; a textfile must end in .prom (bad input otherwise)."""
    configured = loaded.spec.acceptance.metrics
    textfile = textfile or (Path(configured.textfile) if configured.textfile else None)
    if textfile is not None and textfile.suffix != ".prom":
        raise DcforgeError(f"--metrics-textfile {textfile}: node-exporter's textfile collector reads only *.prom files")
    if pushgateway is not None and not re.match(r"^https?://[^\s/]+", pushgateway):
        raise DcforgeError(f"--pushgateway {pushgateway}: expected an http(s) URL, e.g. http://pushgateway:9091")
    return textfile, pushgateway or configured.pushgateway


def _publish_metrics(report: dict, textfile: Path | None, gateway: str | None) -> None:
    from dcforge.report.prometheus import publish

    for line in publish(report, textfile, gateway):
        (errors if line.startswith("error:") else console).print(line, markup=False, highlight=False)


def _archive(report: dict, target: str, keep: int, cluster) -> bool:
    """`--archive-reports`: the report into a ConfigMap (dcforge/report/archive.py); False (one line) on failure."""
    from dcforge.executors.base import ExecutorError
    from dcforge.executors.kubernetes import api_error, client_from_kubeconfig
    from dcforge.report.archive import archive

    try:
        line = archive(report, client_from_kubeconfig(cluster.kubeconfig, cluster.context), target, keep)
    except ExecutorError as error:
        line = f"error: report archive {target}: {error}"
    except Exception as error:  # noqa: BLE001 (ApiException, connection failures: one line, the run is over)
        line = f"error: report archive {target}: {api_error('keeping the report', error)}"
    (errors if line.startswith("error:") else console).print(line, markup=False, highlight=False)
    return not line.startswith("error:")


def _new_report_dir(reports: Path, env_name: str) -> Path:
    """reports/<env>/<UTC time>/, created empty (two runs never share one)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_dir = reports / env_name / stamp
    report_dir.mkdir(parents=True, exist_ok=False)
    return report_dir


class ReportWriter:
    """Rewrites report.json, junit.xml and report.html of a run; keeps the last report for the summary."""

    def __init__(self, report_dir: Path, baseline: dict | None, baseline_path: Optional[Path], tolerance: float):
        self.report_dir = report_dir
        self.baseline = baseline
        self.baseline_path = str(baseline_path) if baseline_path else None
        self.tolerance = tolerance
        self.latest: dict = {}

    def __call__(self, state) -> None:
        from dcforge.report import build_report, write_report_files

        report = build_report(state, baseline=self.baseline, baseline_path=self.baseline_path,
                              tolerance=self.tolerance)
        write_report_files(report, self.report_dir)
        self.latest = report


def _run_with_progress(state, write: ReportWriter) -> None:
    """Run the checks with a spinner naming the running check, its progress lines and one line per result."""
    from dcforge.harness.runner import run_acceptance

    selected = state.selected
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)

        def log(line: str) -> None:
            progress.console.print(f"  [dim]{state.running or ''}: {escape(line)}[/]", highlight=False)

        def started(name: str) -> None:
            progress.update(task, description=f"{name} ({selected.index(name) + 1}/{len(selected)})")

        def finished(result) -> None:
            colour = {"pass": "green", "fail": "red", "error": "magenta", "skipped": "yellow"}[result.status.value]
            reason = f" — {escape(result.reason)}" if result.reason else ""
            progress.console.print(f"[{colour}]{result.status.value.upper():7}[/] {result.name} "
                                   f"({result.duration_s:.1f} s){reason}")

        run_acceptance(state, write, log=log, on_check_start=started, on_check_end=finished)


def _accept_exit_code(state, report: dict, fail_on_regression: bool) -> int:
    if state.interrupted:
        errors.print(f"interrupted by {state.interrupted_by.name}: results measured so far are in the report")
        return state.exit_code
    if fail_on_regression and report.get("baseline") and report["baseline"]["regressions"]:
        return 1
    return state.exit_code


def _print_summary(report: dict) -> None:
    if report["slos"]:
        table = Table(title="SLOs", show_lines=False)
        for column in ("metric", "SLO", "value", "verdict"):
            table.add_column(column, overflow="fold")
        for slo in report["slos"]:
            colour = {"pass": "green", "fail": "red", "error": "magenta", "skipped": "yellow"}[slo["verdict"]]
            value = "—" if slo["value"] is None else f"{slo['value']:.4g}"
            table.add_row(slo["metric"], slo["expression"], value, f"[{colour}]{slo['verdict']}[/]")
        console.print(table)
        for slo in report["slos"]:
            if slo["verdict"] in ("fail", "error"):
                console.print(f"[red]{slo['verdict']}[/] {escape(slo['metric'])} {escape(slo['expression'])}: "
                              f"{escape(slo['reason'])}", highlight=False)
    if report.get("baseline"):
        for metric in report["baseline"]["regressions"]:
            comparison = next(c for c in report["baseline"]["comparisons"] if c["metric"] == metric)
            console.print(f"[red]regression[/] {metric}: {comparison['baseline']:.4g} → {comparison['current']:.4g} "
                          f"({comparison['change']:+.1%}, {comparison['better']} is better)")
    colour = "green" if report["status"] == "pass" else "red"
    counts = ", ".join(f"{n} {status}" for status, n in report["summary"]["checks"].items())
    why = f" — {escape(report['status_reason'])}" if report.get("status_reason") else ""
    console.print(f"[bold {colour}]{report['status'].replace('_', ' ').upper()}[/]: checks {counts}{why}",
                  highlight=False)


@app.command()
def calibrate(
    env: str = EnvOption,
    env_file: Optional[Path] = EnvFileOption,
    runs: int = typer.Option(5, "--runs", min=1, help="How many times to run the checks."),
    checks: Optional[list[str]] = typer.Option(None, "--checks", help="Only these checks (repeat or comma-separate)."),
    k: float = typer.Option(3.0, "--k", min=0.0, help="Threshold = median − k × spread (+ for lower-is-better)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Profile file to write (default: in the reports)."),
    reports: Path = typer.Option(Path("reports"), "--reports", help="Root folder of the runs' reports."),
) -> None:
    """Run the checks N times on nodes known to be good and write a calibrated threshold profile: per metric the
    median, spread and a proposed threshold, with date, host and versions. Use it with
    `dcforge:acceptance.profile: <file>.yaml`."""
    from dcforge.calibrate import calibrate as run_calibration
    from dcforge.harness.runner import select_checks

    loaded = _load(env, env_file)
    selected = select_checks(loaded.spec.acceptance.checks, _split(checks), None)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    reports_dir = reports / loaded.spec.name / f"calibrate-{stamp}"
    out = out or reports_dir / f"calibrated-{loaded.spec.name}.yaml"
    try:
        path, calibrations, left_out = run_calibration(loaded, selected, runs, k, out, reports_dir,
                                                       log=lambda line: console.print(escape(line)))
    except KeyboardInterrupt:
        errors.print(f"interrupted: the runs measured so far are in {reports_dir}")
        raise typer.Exit(130)
    table = Table(title=f"Calibration over {runs} runs (k = {k:g})")
    for column in ("metric", "median", "spread", "proposed"):
        table.add_column(column, overflow="fold")
    for calibration in calibrations:
        op, threshold = calibration.proposed(k)
        table.add_row(calibration.metric, f"{calibration.median:.4g}", f"{calibration.spread:.3g}",
                      f"{op} {threshold:.4g} {calibration.unit}")
    console.print(table)
    for line in left_out:
        console.print(f"[yellow]left out[/] {escape(line)}", highlight=False)
    if not calibrations:
        errors.print("no directional metric was measured by a passing check in every run: no profile written")
        raise typer.Exit(1)
    console.print(f"Profile: {path}  (runs' reports in {reports_dir})")


@app.command()
def report(
    path: Path = typer.Argument(..., help="A report directory (or its report.json); or the word `verify`."),
    verify_dir: Optional[Path] = typer.Argument(None, metavar="[DIR]", help="With `verify`: the report directory."),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help="With `verify`: also check report.json.sig "
                                              "against this Ed25519 public key (PEM)."),
) -> None:
    """`dcforge report DIR`: re-render junit.xml and report.html from a report.json.

    `dcforge report verify DIR [--public-key PUB]`: recompute the sha256 of every artefact, the env file and the
    code recorded in report.json (and check the signature); exit 0 when all match, 1 with one line per changed or
    missing item, 2 on bad input. (A report folder literally named `verify` is `./verify`.)"""
    if str(path) == "verify":
        from dcforge.report.provenance import verify_report

        if verify_dir is None:
            raise DcforgeError("report verify: missing the report directory (dcforge report verify DIR)")
        verdict = verify_report(verify_dir, public_key)
        for line in verdict.problems:
            console.print(line, markup=False, highlight=False)
        if not verdict.ok:
            raise typer.Exit(1)
        console.print(f"verified {verify_dir}: {', '.join(verdict.checked)}", markup=False, highlight=False)
        return
    if verify_dir is not None or public_key is not None:
        raise DcforgeError(f"report {path}: a second directory and --public-key belong to `dcforge report verify DIR`")
    from dcforge.report import rerender

    directory = rerender(path)
    console.print(f"Rendered {directory / 'report.html'} and {directory / 'junit.xml'}")


@app.command()
def metrics(
    check: Optional[str] = typer.Option(None, "--check", help="Only this check's metrics."),
    output_format: str = typer.Option("table", "--format", help="table, json or markdown (the README's table)."),
) -> None:
    """Every metric the checks can report: SLO key, statistics, unit, better direction, meaning and formula
    (definitions: docs/metrics.md)."""
    from dcforge.errors import ConfigError
    from dcforge.metrics_catalogue import FORMATS, catalogue, print_table, render_json, render_markdown

    if output_format not in FORMATS:
        raise ConfigError(None, "--format", f"unknown format {output_format!r}; known: {', '.join(FORMATS)}")
    entries = catalogue(check)
    if output_format == "table":
        print_table(entries, console)
    else:  # plain stdout: rich would wrap long lines and interpret brackets
        sys.stdout.write(render_json(entries) + "\n" if output_format == "json" else render_markdown(entries))


@app.command()
def synth(env: str = EnvOption, env_file: Optional[Path] = EnvFileOption,
          out: Path = typer.Option(..., "--out", "-o", help="Directory to write the manifests to (GitOps).")) -> None:
    """Write every cluster manifest of an environment as YAML, schema-validated and compliance-checked."""
    from dcforge.synth import synth_command

    raise typer.Exit(synth_command(env, out, env_file))


PolicyOption = typer.Option(True, "--policy-pack/--no-policy-pack", "--policy/--no-policy",
                            help="Run the compliance policy pack of stacks/policy inside the engine.")
BackendOption = typer.Option(None, "--backend", help="Pulumi state backend URL (default: $PULUMI_BACKEND_URL, "
                             "else file://<repo>/.pulumi-state).")
SecretsOption = typer.Option("passphrase", "--secrets-provider", help="Pulumi secrets provider of a new stack "
                             "(passphrase: $PULUMI_CONFIG_PASSPHRASE or _FILE).")
RefreshOption = typer.Option(False, "--refresh", help="Read the cluster's objects first, so objects deleted or "
                             "changed by hand show in the plan (and `up` restores them).")


def _deploy(operation: str, env: str, policy: bool, backend: Optional[str], secrets: str, refresh: bool,
            kubeconfig: Optional[Path], context: Optional[str]):
    from dcforge.deploy import DeployOptions, deploy_command

    options = DeployOptions(backend_url=backend, secrets_provider=secrets, policy_pack=policy, refresh=refresh,
                            kubeconfig=Path(_kubeconfig_file(kubeconfig)) if kubeconfig else None, context=context)
    return deploy_command(operation, env, options)


@app.command()
def up(
    ctx: typer.Context,
    env: str = EnvOption,
    policy: bool = PolicyOption,
    run_accept: bool = typer.Option(True, "--accept/--no-accept", help="After a successful update, run "
                                    "`dcforge accept --env X` (on the cluster for target kubernetes)."),
    backend: Optional[str] = BackendOption,
    secrets: str = SecretsOption,
    refresh: bool = RefreshOption,
    kubeconfig: Optional[Path] = KubeconfigOption,
    context: Optional[str] = ContextOption,
) -> None:
    """Deploy the environment's cluster platform (`pulumi up` of stacks/ by the real engine, through the Automation
    API), then prove it: the environment's acceptance runs after a successful update, its report gains a deploy
    section. Exit 0 when both succeeded, 1 when the update or the acceptance failed (a failed update runs no
    acceptance), 2 on bad input or no engine (`make pulumi-tools`), 130 when interrupted."""
    result = _deploy("up", env, policy, backend, secrets, refresh, kubeconfig, context)
    if not run_accept:
        raise typer.Exit(0)
    raise typer.Exit(_accept_after_update(ctx, env, kubeconfig, context, result.to_dict()))


def _accept_after_update(ctx: typer.Context, env: str, kubeconfig: Optional[Path], context: Optional[str],
                         deploy: dict) -> int:
    """`dcforge accept --env X` with its defaults (the update's record as the report's deploy section), then one
    line covering the update and the acceptance."""
    command = typer.main.get_command(app).commands["accept"]  # type: ignore[attr-defined]
    args = ["--env", env, *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []),
            *(["--context", context] if context else [])]
    console.print(f"dcforge up: stack {env!r} updated; running its acceptance")
    try:  # parsed like `dcforge accept --env X ...`: every other option at its default
        with command.make_context("accept", args, parent=ctx, obj={DEPLOY_RECORD: deploy}) as accept_ctx:
            command.invoke(accept_ctx)
        code = 0
    except typer.Exit as done:
        code = done.exit_code
    verdict = {0: "passed", 1: "failed"}.get(code, f"interrupted or refused (exit {code})")
    colour = "green" if code == 0 else "red"
    console.print(f"[bold {colour}]dcforge up --env {env}[/]: update succeeded, acceptance {verdict}")
    return code


@app.command()
def preview(env: str = EnvOption, policy: bool = PolicyOption, backend: Optional[str] = BackendOption,
            secrets: str = SecretsOption, refresh: bool = RefreshOption,
            kubeconfig: Optional[Path] = KubeconfigOption, context: Optional[str] = ContextOption) -> None:
    """Show what `dcforge up` would change (the engine's plan per resource type), policy pack included. Exit 1
    when the engine refuses it (a policy violation, an unreachable cluster)."""
    _deploy("preview", env, policy, backend, secrets, refresh, kubeconfig, context)


@app.command()
def destroy(env: str = EnvOption, backend: Optional[str] = BackendOption, secrets: str = SecretsOption,
            refresh: bool = RefreshOption, kubeconfig: Optional[Path] = KubeconfigOption,
            context: Optional[str] = ContextOption) -> None:
    """Delete every object the stack created (`pulumi destroy`), nothing else; a second destroy changes nothing."""
    _deploy("destroy", env, False, backend, secrets, refresh, kubeconfig, context)


@app.command()
def provision(
    env: str = EnvOption,
    env_file: Optional[Path] = EnvFileOption,
    check: bool = typer.Option(False, "--check", help="Ansible check mode: show what would change, change nothing."),
    limit: Optional[str] = typer.Option(None, "--limit", help="Only these hosts or groups (Ansible pattern)."),
    tags: Optional[list[str]] = typer.Option(None, "--tags", help="Only these roles' tags (repeat or comma-separate)."),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="Instead of playbooks/inventories/<env>/."),
    playbook: str = typer.Option("site.yml", "--playbook", help="Playbook under playbooks/ (gpu-node.yml, verify.yml)."),
) -> None:
    """Provision the environment's GPU hosts with the pinned stack: Ansible (playbooks/) through ansible-runner."""
    from dcforge.provision import provision_command

    raise typer.Exit(provision_command(env, check=check, limit=limit, tags=_split(tags), inventory=inventory,
                                       playbook=playbook, env_file=env_file, console=console))


@app.command()
def inventory(
    env: str = EnvOption,
    env_file: Optional[Path] = EnvFileOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Instead of playbooks/inventories/<env>/."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 when the files differ."),
) -> None:
    """Generate the environment's Ansible inventory (hosts, pinned versions, compatibility verdict, pool facts)."""
    from dcforge.inventory import inventory_command

    raise typer.Exit(inventory_command(env, env_file=env_file, output=out, check=check, console=console))


@app.command(name="clean")
def clean(
    env: str = EnvOption,
    env_file: Optional[Path] = EnvFileOption,
    kubeconfig: Optional[Path] = KubeconfigOption,
    context: Optional[str] = ContextOption,
) -> None:
    """Delete what earlier acceptance runs left on the cluster: every object labelled `dcforge.io/run` in the
    environment's acceptance namespace. Prints each deleted object; exit 0, 1 when some could not be deleted in
    time, 2 when the cluster cannot be reached."""
    from dcforge.executors.base import ExecutorError
    from dcforge.executors.kubernetes import clean_runs, client_from_kubeconfig

    loaded = _load(env, env_file)
    config_file = _kubeconfig_file(kubeconfig)
    try:
        api_client = client_from_kubeconfig(config_file, context)
        deleted, leftovers = clean_runs(loaded.spec, api_client)
    except ExecutorError as error:
        raise DcforgeError(f"clean --env {loaded.spec.name}: {error}") from None
    for name in deleted:
        console.print(f"deleted {name}", markup=False, highlight=False)
    console.print(f"dcforge clean: {len(deleted)} objects of earlier runs deleted", highlight=False)
    if leftovers:
        errors.print(f"still there after the wait: {', '.join(leftovers)}", markup=False, highlight=False)
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except DcforgeError as error:
        for line in str(error).splitlines():
            errors.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
