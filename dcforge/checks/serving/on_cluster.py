"""`inference` on target kubernetes: the bundled server and Locust run in the cluster, not on this machine.

One workload through the kubernetes executor (docs/executors.md), on the inference pool (the first pool with
`purpose: inference`, else the acceptance pool):

- **server**: a Deployment + Service of `python -m workloads.serve` (its `replicas` worker processes in one pod,
  as on this machine, so requests per replica and the warm-up mean the same), its API key a Secret mounted
  read-only, on the pool's GPUs (one per replica, at most a node's) unless `device: cpu`;
- **load**: a Job of `python -m dcforge.checks.serving.load_pod` reaching the server through its Service's
  cluster IP: it waits for every replica, checks the endpoint's rules, runs Locust with the check's own options
  (`locust_arguments`, `load_settings`) and hands back the request log and a `LoadPodResult`.

Every figure is then computed here exactly as on this machine (`collect_load`, `load_summary`), so the report of a
cluster run reads like a local one. Not on the cluster (a settings error naming the key, rather than a silent
difference): `tls` (pods talk plain HTTP inside the acceptance namespace, whose NetworkPolicies admit only the
run's pods; TLS is the gateway's), `capacity` sweeps, `promptFile` (a file on this machine) and
`modelSource: trained` (the train check's checkpoint is not on the cluster); energy figures need the nodes'
power readings, which a restricted pod cannot take, so they are absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from dcforge.executors.base import Readiness, Resources, Role, VolumePurpose, Workload

if TYPE_CHECKING:
    from dcforge.checks.serving.settings import ServingLoadConfig
    from dcforge.harness.check import CheckContext
    from dcforge.harness.result import CheckResult
    from dcforge.spec.models import Environment

SERVER_ROLE, LOAD_ROLE = "server", "load"
HTTP_PORT = "http"
SERVED_NAME = "dcforge-gpt"
SERVER_URL = f"http://{{role_address[{SERVER_ROLE}]}}:{{role_port[{SERVER_ROLE}][{HTTP_PORT}]}}"
"""The server's Service as the load pod reaches it (executor templates)."""
LOAD_POD_MARGIN_S = 60.0
"""Time the load pod needs beyond Locust's own limit: the readiness wait is separate, this covers the endpoint
probe, the metrics read and printing the results into the log."""


def inference_pool(spec: Environment) -> str | None:
    """The pool the server runs on: the first with purpose inference, else the acceptance pool's (None: no pool)."""
    for pool in spec.gpu_pools:
        if pool.purpose == "inference":
            return pool.name
    chosen = spec.acceptance_pool
    return chosen.name if chosen is not None else None


def refuse_unsupported(ctx: CheckContext, check: str, config: ServingLoadConfig) -> None:
    """A setting that has no meaning on the cluster is a ConfigError naming it, never silently dropped."""
    from dcforge.checks.train import settings_error

    why = {"tls": ("tls", "the server and the load pod talk plain HTTP inside the acceptance namespace, where only "
                   "the run's pods may reach it; TLS terminates at the inference gateway. Set tls: false"),
           "capacity": ("capacity", "capacity sweeps run on target local only"),
           "prompt_file": ("promptFile", "a prompt file on this machine is not in the load pod; remove it to "
                           "send generated prompts"),
           "trained": ("modelSource", "the train check's checkpoint is not on the cluster; use random or auto")}
    unsupported = {"tls": config.tls, "capacity": getattr(config, "capacity", None) is not None,
                   "prompt_file": bool(config.prompt_file), "trained": config.model_source == "trained"}
    for name, used in unsupported.items():
        if used:
            key, message = why[name]
            raise settings_error(ctx, check, key, f"not available on target kubernetes: {message}")


def server_resources(config: ServingLoadConfig, gpus_per_node: int) -> Resources:
    """One CPU per replica plus one for gunicorn, 1 GiB each (the bundled presets are small); a GPU per replica
    up to a node's on a GPU pool, unless the replicas serve on the CPU."""
    gpus = 0 if config.device == "cpu" or config.quantize == "int8" else min(config.replicas, gpus_per_node)
    return Resources(cpus=config.replicas + 1.0, memory_mib=1024 * (config.replicas + 1), gpus=gpus)


def _literal(text: str) -> str:
    """`text` as an executor template that means itself (its braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def inference_workload(config: ServingLoadConfig, prompt_tokens: int, api_key: str, gpus_per_node: int,
                       ready_timeout_s: float, load_limit_s: float) -> Workload:
    from dcforge.checks.serving.load import load_settings, locust_arguments
    from loadtests import pacing
    from workloads.records import REQUEST_LOG_TEMPLATE, LoadEnv
    from workloads.serving.settings import API_KEY_FILE_ENV

    key_file = "{volume[secrets]}/api-key"
    server = Role(SERVER_ROLE, (
        "{python}", "-m", "workloads.serve", "--host", "{node_address}", "--port", f"{{port[{HTTP_PORT}]}}",
        "--replicas", str(config.replicas), "--max-batch", str(config.max_batch),
        "--max-wait-ms", str(config.max_wait_ms), "--state-dir", "{volume[scratch]}/server-state",
        "--device", config.device, "--balance", config.balance, "--quantize", config.quantize,
        "--preset", _literal(config.preset), "--model-name", SERVED_NAME),
        env={API_KEY_FILE_ENV: key_file}, resources=server_resources(config, gpus_per_node), ports=(HTTP_PORT,),
        readiness=Readiness(port=HTTP_PORT, timeout_s=ready_timeout_s))
    logs = "{volume[scratch]}/requests"
    settings = {key: _literal(value) for key, value in load_settings(config, prompt_tokens, SERVED_NAME, "").items()}
    settings.update({LoadEnv.API_KEY_FILE: key_file,
                     LoadEnv.REQUEST_LOG: f"{logs}/{_literal(REQUEST_LOG_TEMPLATE)}",
                     LoadEnv.WINDOW_FILE: f"{logs}/{_literal(pacing.WINDOW_FILE_TEMPLATE)}"})
    load = Role(LOAD_ROLE, (
        "{python}", "-m", "dcforge.checks.serving.load_pod", "--url", SERVER_URL, "--served-name", SERVED_NAME,
        "--replicas", str(config.replicas), "--ready-timeout", f"{ready_timeout_s:g}", "--logs", logs,
        "--results", "{volume[results]}", "--timeout", f"{load_limit_s:g}", "--",
        "{python}", "-m", "locust", "-f", "{workdir}/loadtests/locustfile.py",
        *(_literal(arg) for arg in locust_arguments(config)), "--host", SERVER_URL),
        env=settings, resources=Resources(cpus=float(config.locust_processes),
                                          memory_mib=512 * (config.locust_processes + 1)))
    return Workload("inference", (server, load), volumes=(VolumePurpose.SCRATCH, VolumePurpose.RESULTS,
                                                          VolumePurpose.SECRETS),
                    timeout_s=ready_timeout_s + load_limit_s + LOAD_POD_MARGIN_S,
                    secrets={"api-key": api_key.encode()})


def run_load_on_cluster(ctx: CheckContext, config: ServingLoadConfig, check: str, result: CheckResult):
    """Server and load pod on the cluster, then every figure from the load pod's records, as on this machine.
    Returns (request records, the LoadPodResult); None when the run could not complete (the result says why)."""
    from dcforge.checks.multinode import kubernetes_executor, live_view, platform_failure
    from dcforge.checks.serving.credentials import new_api_key
    from dcforge.checks.serving.load import REQUEST_LOG_DIR, collect_load, run_details, warmup_allowance_s
    from dcforge.checks.serving.settings import fitted_prompt_tokens
    from dcforge.errors import ConfigError
    from dcforge.executors.base import ExecutorError, NodeState
    from dcforge.harness.result import Status
    from workloads.model import get_preset
    from workloads.records import LOAD_POD_REQUESTS_FILE, LOAD_POD_RESULT_FILE, LoadPodResult, read_result

    refuse_unsupported(ctx, check, config)
    try:
        prompt_tokens = fitted_prompt_tokens(config, get_preset(config.preset).max_seq_len)
    except ValueError as error:
        raise ConfigError(ctx.env.path, f"dcforge:acceptance.settings.{check}.maxTokens", str(error)) from None
    executor = kubernetes_executor(ctx, pool=inference_pool(ctx.env.spec))
    pool = executor.target.pool
    result.details.update(run_details(config, f"random:{config.preset}", prompt_tokens, None))
    workdir = ctx.artefact_dir(check)
    ready_timeout_s = min(config.ready_timeout_s, max(1.0, ctx.remaining_s()))
    load_limit_s = config.duration_s + warmup_allowance_s(config) + config.stop_grace_s + 60
    workload = inference_workload(config, prompt_tokens, new_api_key(), pool.gpus_per_node if pool else 0,
                                  ready_timeout_s, load_limit_s)
    ctx.log(f"{check} on the cluster: server ({config.replicas} replicas) and Locust on pool "
            f"{pool.name if pool else '(any node)'}")
    try:
        with executor.start(workload, workdir / "pods") as execution:
            outcome = execution.wait(min(workload.timeout_s, max(5.0, ctx.remaining_s())), live_view(ctx),
                                     roles=[LOAD_ROLE])
            by_role = {status.role: status for status in outcome.nodes}
            load = by_role[LOAD_ROLE]
            result.details.update(executor="kubernetes", api_requests=execution.api_requests,
                                  pods={s.role: {"pod": s.host, "kubernetes_node": s.kubernetes_node}
                                        for s in outcome.nodes})
            if load.state is not NodeState.SUCCEEDED or outcome.timed_out:
                result.fail(f"{check} on the cluster: {outcome.failure_summary()}")
                if platform_failure(outcome.nodes):
                    result.status = Status.ERROR
                return None
            summary = read_result(execution.read_result(LOAD_ROLE, 0, LOAD_POD_RESULT_FILE).decode().splitlines(),
                                  LoadPodResult, "the load pod's result")
            requests = execution.read_result(LOAD_ROLE, 0, LOAD_POD_REQUESTS_FILE)
    except ExecutorError as error:
        result.status, result.reason = Status.ERROR, str(error)
        return None
    for status in outcome.nodes:
        if status.log_path is not None and status.log_path.exists():
            result.artefacts[f"log.{status.role}"] = ctx.relative(status.log_path)
    log_dir = workdir / REQUEST_LOG_DIR
    write_load_pod_logs(log_dir, requests, summary.windows)
    result.add_metric("replicas_ready_s", summary.ready_s)
    return collect_load(ctx, config, workdir, log_dir, result), summary


def write_load_pod_logs(log_dir: Path, requests: bytes, windows: list[dict]) -> None:
    """The load pod's request log and windows as the local run leaves them, for `collect_load`."""
    import shutil

    from loadtests import pacing
    from workloads.records import REQUEST_LOG_TEMPLATE

    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    (log_dir / REQUEST_LOG_TEMPLATE.format(pid="pod")).write_bytes(requests)
    for index, window in enumerate(windows):
        (log_dir / pacing.WINDOW_FILE_TEMPLATE.format(pid=index)).write_text(json.dumps(window) + "\n")
