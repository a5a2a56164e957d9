"""`inference` and `inference_failover` on target kubernetes: the bundled server and Locust run in the cluster,
not on this machine.

One workload through the kubernetes executor (docs/executors.md), on the inference pool (the first pool with
`purpose: inference`, else the acceptance pool):

- **server**: a Deployment + Service of `python -m workloads.serve` (its `replicas` worker processes in one pod,
  as on this machine, so requests per replica and the warm-up mean the same), its API key a Secret mounted
  read-only, on the pool's GPUs (one per replica, at most a node's) unless `device: cpu`;
- **load**: a Job of `python -m dcforge.steps.serving.load_pod` reaching the server through its Service's
  cluster IP: it waits for every replica, checks the endpoint's rules, runs Locust with the check's own options
  (`locust_arguments`, `load_settings`) and hands back the request log and a `LoadPodResult`.

`inference_failover` gives the server a pod per replica (named by pod address in the replica header) and deletes
one when the load pod asks (`--kill-at`, on the load pod's clock), then waits for the Deployment's replacement.

Every figure is then computed here exactly as on this machine (`collect_load`, `load_summary`), so the report of a
cluster run reads like a local one. Not on the cluster (a settings error naming the key, rather than a silent
difference): `tls` (pods talk plain HTTP inside the acceptance namespace, whose NetworkPolicies admit only the
run's pods; TLS is the gateway's), `capacity` sweeps, `promptFile` (a file on this machine) and
`modelSource: trained` (the train check's checkpoint is not on the cluster); energy figures need the nodes'
power readings, which a restricted pod cannot take, so they are absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dcforge.executors.base import Readiness, Resources, Role, VolumePurpose, Workload, literal

if TYPE_CHECKING:
    from dcforge.steps.serving.settings import ServingLoadConfig
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
    from dcforge.harness.check import settings_error

    unsupported = [
        (config.tls, "tls", "the server and the load pod talk plain HTTP inside the acceptance namespace, where only "
                            "the run's pods may reach it; TLS terminates at the inference gateway. Set tls: false"),
        (getattr(config, "capacity", None) is not None, "capacity", "capacity sweeps run on target local only"),
        (bool(config.prompt_file), "promptFile", "a prompt file on this machine is not in the load pod; remove it "
                                                 "to send generated prompts"),
        (config.model_source == "trained", "modelSource", "the train check's checkpoint is not on the cluster; use "
                                                          "random or auto")]
    for used, key, message in unsupported:
        if used:
            raise settings_error(ctx, check, key, f"not available on target kubernetes: {message}")


def server_resources(config: ServingLoadConfig, replicas: int, gpus_per_node: int) -> Resources:
    """A server pod of `replicas` worker processes: a quarter CPU each plus one for gunicorn as the scheduling
    floor (no CPU limit: the replicas use what the node has free), 1 GiB each (the bundled presets are small); a
    GPU per replica up to a node's on a GPU pool, unless the replicas serve on the CPU. A whole CPU per replica
    left a 2-core node unable to place the server beside its load pod (seen on a real cluster)."""
    gpus = 0 if config.device == "cpu" or config.quantize == "int8" else min(replicas, gpus_per_node)
    return Resources(cpus=0.25 * (replicas + 1), memory_mib=1024 * (replicas + 1), gpus=gpus)


@dataclass(frozen=True)
class ClusterRun:
    """How `inference` or `inference_failover` lays the serving run out on the cluster."""

    server_pods: int = 1
    """1: one pod holds every replica (`inference`); `replicas`: a pod per replica, each named by its address in
    the replica header, so deleting a pod fails over exactly one replica (`inference_failover`)."""
    kill_at_s: float | None = None
    """The load pod announces the kill this long after Locust started (`inference_failover`)."""


def inference_workload(config: ServingLoadConfig, prompt_tokens: int, api_key: str, gpus_per_node: int,
                       ready_timeout_s: float, load_limit_s: float, layout: ClusterRun = ClusterRun()) -> Workload:
    from dcforge.steps.serving.load import load_settings, locust_arguments
    from loadtests import pacing
    from workloads.model import get_preset
    from workloads.records import REQUEST_LOG_TEMPLATE, LoadEnv
    from workloads.serving.settings import API_KEY_FILE_ENV

    key_file = "{volume[secrets]}/api-key"
    per_pod = config.replicas // layout.server_pods
    tag = ("--replica-tag", "{node_address}") if layout.server_pods > 1 else ()
    server = Role(SERVER_ROLE, (
        "{python}", "-m", "workloads.serve", "--host", "{node_address}", "--port", f"{{port[{HTTP_PORT}]}}",
        "--replicas", str(per_pod), "--max-batch", str(config.max_batch),
        "--max-wait-ms", str(config.max_wait_ms), "--state-dir", "{volume[scratch]}/server-state",
        "--device", config.device, "--balance", config.balance, "--quantize", config.quantize,
        "--preset", literal(config.preset), "--model-name", SERVED_NAME, *tag),
        env={API_KEY_FILE_ENV: key_file}, nodes=layout.server_pods,
        resources=server_resources(config, per_pod, gpus_per_node), ports=(HTTP_PORT,),
        readiness=Readiness(port=HTTP_PORT, http_path="/ready", timeout_s=ready_timeout_s))
    logs = "{volume[scratch]}/requests"
    context = get_preset(config.preset).max_seq_len  # a conversation's turns must fit the served model's context
    settings = {key: literal(value) for key, value in
                load_settings(config, prompt_tokens, SERVED_NAME, "", context).items()}
    settings.update({LoadEnv.API_KEY_FILE: key_file,
                     LoadEnv.REQUEST_LOG: f"{logs}/{literal(REQUEST_LOG_TEMPLATE)}",
                     LoadEnv.WINDOW_FILE: f"{logs}/{literal(pacing.WINDOW_FILE_TEMPLATE)}"})
    kill = ("--kill-at", f"{layout.kill_at_s:g}") if layout.kill_at_s is not None else ()
    load = Role(LOAD_ROLE, (
        "{python}", "-m", "dcforge.steps.serving.load_pod", "--url", SERVER_URL, "--served-name", SERVED_NAME,
        "--replicas", str(config.replicas), "--ready-timeout", f"{ready_timeout_s:g}", "--logs", logs,
        "--results", "{volume[results]}", "--timeout", f"{load_limit_s:g}", *kill, "--",
        "{python}", "-m", "locust", "-f", "{workdir}/loadtests/locustfile.py",
        *(literal(arg) for arg in locust_arguments(config)), "--host", SERVER_URL),
        env=settings, resources=Resources(cpus=0.25 * config.workers,  # a floor, as the server's
                                          memory_mib=512 * (config.workers + 1)))
    return Workload("inference", (server, load), volumes=(VolumePurpose.SCRATCH, VolumePurpose.RESULTS,
                                                          VolumePurpose.SECRETS),
                    timeout_s=ready_timeout_s + load_limit_s + LOAD_POD_MARGIN_S,
                    secrets={"api-key": api_key.encode()})


def run_load_on_cluster(ctx: CheckContext, config: ServingLoadConfig, check: str, result: CheckResult,
                        layout: ClusterRun = ClusterRun(), during=None):
    """Server and load pod on the cluster, then every figure from the load pod's records, as on this machine.
    `during(execution)` runs while the load does (the failover's kill) and returns what the caller wants back.
    Returns (request records, the LoadPodResult, what `during` returned); None when the run could not complete
    (the result says why)."""
    from dcforge.placement.targets import kubernetes_executor, live_view
    from dcforge.steps.step import platform_failure
    from dcforge.steps.serving.credentials import new_api_key
    from dcforge.steps.serving.load import REQUEST_LOG_DIR, collect_load, run_details, warmup_allowance_s
    from dcforge.executors.base import ExecutorError, NodeState
    from dcforge.harness.result import Status
    from workloads.records import LOAD_POD_REQUESTS_FILE, LOAD_POD_RESULT_FILE, LoadPodResult, read_result

    prompt_tokens = cluster_prompt_tokens(ctx, check, config)
    executor = kubernetes_executor(ctx, pool=inference_pool(ctx.env.spec))
    pool = executor.target.pool
    result.details.update(run_details(config, f"random:{config.preset}", prompt_tokens, None))
    workdir = ctx.artefact_dir(check)
    ready_timeout_s = min(config.ready_timeout_s, max(1.0, ctx.remaining_s()))
    load_limit_s = config.duration_s + warmup_allowance_s(config) + config.stop_grace_s + 60
    workload = inference_workload(config, prompt_tokens, new_api_key(), pool.gpus_per_node if pool else 0,
                                  ready_timeout_s, load_limit_s, layout)
    ctx.log(f"{check} on the cluster: {config.replicas} replicas in {layout.server_pods} server pod(s) and Locust "
            f"on pool {pool.name if pool else '(any node)'}")
    try:
        with executor.start(workload, workdir / "pods") as execution:
            extra = during(execution) if during is not None else None
            outcome = execution.wait(min(workload.timeout_s, max(5.0, ctx.remaining_s())), live_view(ctx),
                                     roles=[LOAD_ROLE])
            load = next(status for status in outcome.nodes if status.role == LOAD_ROLE)
            result.details.update(executor="kubernetes", api_requests=execution.api_requests, pods=[
                {"role": s.role, "pod": s.host, "kubernetes_node": s.kubernetes_node} for s in outcome.nodes])
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
    result.details.update(pods_started_s=execution.startup_s, cleanup_s=execution.cleanup_s)
    for status in outcome.nodes:
        if status.log_path is not None and status.log_path.exists():
            result.artefacts[f"log.{status.role}.{status.index}"] = ctx.relative(status.log_path)
    log_dir = workdir / REQUEST_LOG_DIR
    write_load_pod_logs(log_dir, requests, summary.windows)
    result.add_metric("replicas_ready_s", summary.ready_s)
    return collect_load(ctx, config, workdir, log_dir, result), summary, extra


def cluster_prompt_tokens(ctx: CheckContext, check: str, config: ServingLoadConfig) -> int:
    """The prompt length that fits the preset's context; settings the cluster cannot honour are refused first."""
    from dcforge.steps.serving.settings import fitted_prompt_tokens
    from dcforge.errors import ConfigError
    from workloads.model import get_preset

    refuse_unsupported(ctx, check, config)
    try:
        return fitted_prompt_tokens(config, get_preset(config.preset).max_seq_len)
    except ValueError as error:
        raise ConfigError(ctx.env.path, f"dcforge:acceptance.settings.{check}.maxTokens", str(error)) from None


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


# --- inference_failover: a server pod deleted under load ---------------------------------------------------------

@dataclass(frozen=True)
class PodKill:
    """The failover's kill on the cluster; `t_kill` in the load pod's clock (the request log's)."""

    t_kill: float
    """When the load pod asked for the kill + how long the check took from seeing the request to the deletion."""
    victim_pod: str
    victim_address: str
    respawned_pod: str
    respawned_address: str
    respawn_s: float
    """Deletion -> the Deployment's replacement pod Ready (its /ready answered: the model is loaded)."""


def delete_a_server_pod(ctx: CheckContext, execution, config, load_limit_s: float) -> PodKill | str:
    """Once every server pod is Ready, wait for the load pod's kill request (KILL_LINE in its log, read every
    0.2 s: the kill lands at most that late plus one log read, and the delay is added to the kill time), delete the
    first server pod at once, and wait for its replacement to be Ready. Returns why not, when the load pod ended
    or never asked within `load_limit_s`."""
    import time

    from dcforge.steps.serving.load_pod import KILL_LINE
    from dcforge.executors.base import wait_for_log_line

    execution.wait_ready(SERVER_ROLE)
    deadline = time.monotonic() + load_limit_s
    line = wait_for_log_line(execution, LOAD_ROLE, KILL_LINE, give_up=lambda: time.monotonic() > deadline)
    if line is None:
        load = next(s for s in execution.statuses() if s.role == LOAD_ROLE)
        return f"the load pod {'ended' if load.state.finished else 'ran on'} without asking for the kill"
    asked = float(line.split(KILL_LINE, 1)[1].split()[0])  # its epoch: the load pod's clock
    seen = time.time()
    servers = [s for s in execution.statuses() if s.role == SERVER_ROLE]
    victim = servers[0]
    execution.kill_node(SERVER_ROLE, victim.index)
    deleted = time.time()
    ctx.log(f"deleted server pod {victim.host} ({victim.address}) {deleted - seen:.2f} s after the load pod asked")
    execution.wait_ready(SERVER_ROLE)
    ready = time.time()
    (new,) = [s for s in execution.statuses() if s.role == SERVER_ROLE and s.host not in {x.host for x in servers}]
    return PodKill(asked + (deleted - seen), victim.host, victim.address, new.host, new.address, ready - deleted)


def replica_of(records, address: str) -> str:
    """The replica id the pod at `address` answered with (`<address>/<pid>`); `<address>/(no answer)`, which no
    record carries, when it answered nothing (then the check says so)."""
    from collections import Counter

    named = Counter(r.replica for r in records if r.replica.startswith(f"{address}/"))
    return named.most_common(1)[0][0] if named else f"{address}/(no answer)"


def failover_on_cluster(ctx: CheckContext, config, check: str, result: CheckResult):
    """`inference_failover` on the cluster: a pod per replica behind the server's Service, the first deleted when
    the load pod asks (killAtS after Locust started), the Deployment's replacement awaited. Returns (records, load
    start, Kill, replicas Ready after the respawn); None when the run or the kill could not happen (the result
    says why)."""
    from dcforge.steps.serving.failover import Kill
    from dcforge.steps.serving.load import warmup_allowance_s

    limit = config.duration_s + warmup_allowance_s(config) + config.ready_timeout_s
    ran = run_load_on_cluster(ctx, config, check, result, ClusterRun(config.replicas, config.kill_at_s),
                              during=lambda execution: delete_a_server_pod(ctx, execution, config, limit))
    if ran is None:
        return None
    records, pod_result, pod_kill = ran
    if isinstance(pod_kill, str):
        result.fail(f"no server pod was deleted, so failover cannot be measured: {pod_kill}")
        return None
    result.details.update(victim_pod=pod_kill.victim_pod, respawned_pod=pod_kill.respawned_pod)
    kill = Kill(pod_kill.t_kill, replica_of(records, pod_kill.victim_address),
                replica_of(records, pod_kill.respawned_address), pod_kill.respawn_s,
                f"pod {pod_kill.victim_pod} deleted")
    return records, pod_result.locust_started, kill, config.replicas
