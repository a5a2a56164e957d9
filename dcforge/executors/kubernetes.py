"""The `kubernetes` executor: every role as Kubernetes objects in the acceptance namespace (docs/executors.md).

Built on the official `kubernetes` client. `start` creates the run's objects in order (NetworkPolicy, checkpoint
claims, Services, then the Jobs and Deployments: the pods are given their leader's Service cluster IP), then two
watches keep the pods and the namespace's events current; `statuses` is computed from what they saw, so waiting
costs no API requests. A pod that cannot run becomes a failed node at once, with one line naming the pod and the
reason: Unschedulable (no node with the GPUs, an untolerated taint; after a short grace), ImagePullBackOff,
CrashLoopBackOff, OOMKilled, and a Job or ReplicaSet whose pods are rejected at admission (PodSecurity, quota:
FailedCreate).

`stop` deletes every object labelled `dcforge.io/execution=<execution>` (workloads first, so no controller recreates a
pod) and waits, bounded, until none is left. Every API call is one of `EXECUTOR_API_ACCESS`, which the
Acceptance component's Role grants and nothing more, or (`pool_nodes`, listing the pool's nodes to pin a workload
to them: `pinned`) `NODE_LIST_ACCESS`, its ClusterRole.

Selected by `acceptance.target: kubernetes` (dcforge/placement/targets.py `executor_for`); `clean_runs` is
`dcforge clean`: it deletes what earlier runs left behind.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from dcforge.executors.base import (ExecutionOutcome, ExecutorError, NodeState, NodeStatus, Resources,
                                    StatusCallback, Workload, wait_loop)
from dcforge.executors.kubernetes_access import EXECUTOR_API_ACCESS
from dcforge.executors.kubernetes_objects import (EXECUTION_LABEL, JOB_INDEX_LABEL, NODE_INDEX_LABEL, ROLE_LABEL,
                                                  RUN_LABEL, ObjectError, Target, execution_target, is_server,
                                                  job_names, node_resources, object_name, pool_selector,
                                                  prerequisite_objects, run_label_value, target_for, tolerations_for,
                                                  workload_objects, workload_secret)
from dcforge.executors.pod_results import parse_results
from dcforge.spec.models import Environment

__all__ = ["EXECUTOR_API_ACCESS", "KubernetesExecution", "KubernetesExecutor", "LabelledObjects", "clean_runs",
           "client_from_kubeconfig"]

# kind -> (client API class, method suffix): create_<suffix>, list_<suffix>, delete_<suffix>.
KINDS: dict[str, tuple[str, str]] = {
    "NetworkPolicy": ("NetworkingV1Api", "namespaced_network_policy"),
    "PersistentVolumeClaim": ("CoreV1Api", "namespaced_persistent_volume_claim"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Job": ("BatchV1Api", "namespaced_job"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "Pod": ("CoreV1Api", "namespaced_pod"),
    "Secret": ("CoreV1Api", "namespaced_secret"),
}
DELETE_ORDER = ("Job", "Deployment", "Pod", "Service", "PersistentVolumeClaim", "NetworkPolicy")
"""Controllers first (they would recreate pods), then pods, then what the pods used. Not Secrets: the executor may
not list them (EXECUTOR_API_ACCESS); an execution's Secret is deleted by name and owned by its first Job or
Deployment, so the garbage collector removes it with them (`dcforge clean` too)."""
FATAL_WAITING = {"ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
"""Container waiting reasons that do not resolve by themselves: the node has failed. (ErrImagePull is the first,
possibly transient, failure; the kubelet reports ImagePullBackOff seconds later when it persists.)"""
UNSCHEDULABLE_GRACE_S = 20.0
"""How long a pod may stay Unschedulable before its node fails: a claim being provisioned reports Unschedulable
("unbound immediate PersistentVolumeClaims") for a few seconds; missing GPUs or an untolerated taint do not pass."""
REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds of every request but the watches."""
WATCH_S = 60
"""Server-side timeout of one watch request; the watch is then resumed from where it was."""
EVENTS_WATCH_AFTER_S = 2.0
"""A node with no pod this long after the start: watch the namespace's events for its controller's FailedCreate
(Pod Security, a quota). Not from the start: the events of a busy namespace are many, and most pods come at once."""
WATCH_FAILURE_S = 30.0
"""A watch failing this long (the API server unreachable) is an error, not a wait until the run's timeout."""


def client_from_kubeconfig(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient from a kubeconfig (default: $KUBECONFIG or ~/.kube/config), or the in-cluster account when
    there is no kubeconfig and dcforge runs in a pod. ExecutorError (one line) when neither works."""
    from kubernetes import client, config

    try:
        return _with_bearer_token(config.new_client_from_config(config_file=kubeconfig, context=context))
    except (config.ConfigException, OSError) as error:
        if kubeconfig is None and context is None:
            try:
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                return _with_bearer_token(client.ApiClient(configuration))
            except config.ConfigException:
                pass
        raise ExecutorError(f"kubeconfig {kubeconfig or '(default)'}: {one_line(str(error))}") from None


def _with_bearer_token(api_client: Any) -> Any:
    """The token of an in-cluster ServiceAccount (or a kubeconfig's static token) where the client sends it.

    kubernetes 36's generated Configuration looks the token up as api_key['BearerToken'], while its config
    loaders still write api_key['authorization'] (kubernetes-client/python#2585): without this, a pod's requests go
    out anonymous. The loaders' refresh hook (a rotated ServiceAccount token is read again) is kept, the copy made
    after it."""
    configuration = api_client.configuration
    loaders_hook = configuration.refresh_api_key_hook

    def refresh(target) -> None:  # noqa: ANN001 (the client's Configuration)
        if loaders_hook is not None:
            loaders_hook(target)
        if "authorization" in target.api_key:
            target.api_key["BearerToken"] = target.api_key["authorization"]

    if "authorization" in configuration.api_key or loaders_hook is not None:
        configuration.refresh_api_key_hook = refresh
        refresh(configuration)
    return api_client


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def api_error(what: str, error: BaseException) -> ExecutorError:
    """An API or connection failure as one line naming what was being done."""
    status = getattr(error, "status", None)
    if status:
        message = getattr(error, "reason", "") or ""
        try:
            body = json.loads(getattr(error, "body", "") or "{}")
            message = body.get("message") or message
        except (ValueError, AttributeError):
            pass
        return ExecutorError(f"{what}: HTTP {status}: {one_line(str(message))}")
    return ExecutorError(f"{what}: {one_line(str(error) or type(error).__name__)}")


def pod_condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def pod_state(pod: dict[str, Any], unschedulable_for_s: float = float("inf"),
              unschedulable_grace_s: float = 0.0) -> tuple[NodeState, int | None, str]:
    """A pod's node state, exit code and one-line reason naming the pod. An Unschedulable pod fails once it has
    been so for `unschedulable_grace_s` (`unschedulable_for_s`: how long it has been seen so)."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    containers = status.get("containerStatuses") or []
    terminated = next(((c.get("state") or {}).get("terminated") for c in containers
                       if (c.get("state") or {}).get("terminated")), None)
    if phase == "Succeeded":
        return NodeState.SUCCEEDED, 0, ""
    if phase == "Failed":
        code = terminated.get("exitCode") if terminated else None
        why = (terminated or {}).get("reason") or status.get("reason") or "failed"
        detail = status.get("message") or (terminated or {}).get("message") or ""
        return NodeState.FAILED, code, one_line(f"pod {name}: {why}" + (f": {detail}" if detail else ""))
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            last = ((container.get("lastState") or {}).get("terminated") or {})
            cause = f" (last exit: {last.get('reason')}, code {last.get('exitCode')})" if last else ""
            return NodeState.FAILED, last.get("exitCode"), one_line(
                f"pod {name}: {waiting['reason']}{cause}: {waiting.get('message') or ''}".rstrip(": "))
    scheduled = pod_condition(pod, "PodScheduled")
    if is_unschedulable(pod) and unschedulable_for_s >= unschedulable_grace_s:
        return NodeState.FAILED, None, one_line(f"pod {name}: Unschedulable: {scheduled.get('message') or ''}")
    return (NodeState.RUNNING if phase == "Running" else NodeState.PENDING), None, waiting_detail(pod)


def waiting_detail(pod: dict[str, Any]) -> str:
    """Why a pod that has not failed is not running yet, for the live view: Unschedulable (within its grace) with
    the scheduler's message, a container's waiting reason (ContainerCreating, ErrImagePull), else empty."""
    if is_unschedulable(pod):
        return one_line(f"Unschedulable: {pod_condition(pod, 'PodScheduled').get('message') or ''}")
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return one_line(f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "))
    return ""


def is_unschedulable(pod: dict[str, Any]) -> bool:
    scheduled = pod_condition(pod, "PodScheduled")
    return scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"


def made_by(involved: dict[str, Any], controller: str, server: bool) -> bool:
    """Whether an event's object is the role's Job, or a ReplicaSet (`<deployment>-<hash>`) of its Deployment."""
    name = involved.get("name") or ""
    if server:
        return involved.get("kind") == "ReplicaSet" and "-" in name and name.rsplit("-", 1)[0] == controller
    return involved.get("kind") == "Job" and name == controller


def api_groups(api_client: Any) -> dict[str, Any]:
    """The client API classes KINDS names, bound to `api_client`."""
    from kubernetes import client

    return {name: getattr(client, name)(api_client) for name, _ in KINDS.values()}


class LabelledObjects:
    """The objects of one namespace that carry `label` (with `value`, or any value when it is None): listed and
    deleted, controllers first. What an execution's `stop` (its execution label) and `dcforge clean` (the run
    label, any value) share. `call` runs every request (the execution counts them)."""

    def __init__(self, apis: dict[str, Any], namespace: str, label: str, value: str | None = None,
                 call: Callable[..., Any] | None = None):
        self.apis, self.namespace, self.label, self.value = apis, namespace, label, value
        self.selector = label if value is None else f"{label}={value}"
        self._call = call or (lambda method, *args, **kwargs: method(*args, **kwargs))

    def method(self, verb: str, kind: str) -> Callable[..., Any]:
        api, suffix = KINDS[kind]
        return getattr(self.apis[api], f"{verb}_{suffix}")

    def matches(self, obj: dict[str, Any]) -> bool:
        found = ((obj.get("metadata") or {}).get("labels") or {})
        return self.label in found and (self.value is None or found[self.label] == self.value)

    def names(self, kind: str) -> list[str]:
        """The labelled objects of `kind`; ExecutorError (one line) when the API cannot be asked."""
        try:
            response = self._call(self.method("list", kind), self.namespace, label_selector=self.selector,
                                  _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except Exception as error:  # noqa: BLE001 (ApiException, urllib3 errors: reported in one line)
            raise api_error(f"listing {kind} labelled {self.selector} in namespace {self.namespace}",
                            error) from None
        items = json.loads(response.data).get("items") or []
        return [o["metadata"]["name"] for o in items if self.matches(o)]  # the selector, also where not applied

    def delete(self, kind: str, name: str, grace_s: float | None = None) -> None:
        try:
            self._call(self.method("delete", kind), name, self.namespace, propagation_policy="Background",
                       grace_period_seconds=None if grace_s is None else int(grace_s), _preload_content=False,
                       _request_timeout=REQUEST_TIMEOUT)
        except Exception as error:  # noqa: BLE001
            if getattr(error, "status", None) != 404:  # already gone is what we wanted
                raise api_error(f"deleting {kind}/{name} in namespace {self.namespace}", error) from None

    def delete_all(self, timeout_s: float, grace_s: float,
                   kinds: Collection[str] = DELETE_ORDER) -> tuple[list[str], list[str]]:
        """Delete every labelled object of `kinds` (DELETE_ORDER's order) and wait until none is left, at most
        `timeout_s`. Returns (deleted, leftovers) as `Kind/name`; never raises (a failure leaves the kind in
        leftovers)."""
        deadline = time.monotonic() + timeout_s
        deleted: list[str] = []
        remaining = [kind for kind in DELETE_ORDER if kind in kinds]
        while remaining and time.monotonic() < deadline:
            kind = remaining[0]
            try:
                names = self.names(kind)
                for name in names:
                    self.delete(kind, name, grace_s=grace_s if kind == "Pod" else None)
                    if f"{kind}/{name}" not in deleted:
                        deleted.append(f"{kind}/{name}")
                if not names or not self.names(kind):
                    remaining.pop(0)
                else:
                    time.sleep(0.5)  # pods terminating within their grace period
            except ExecutorError:
                time.sleep(0.5)
        leftovers: list[str] = []
        for kind in remaining:
            try:
                leftovers += [f"{kind}/{name}" for name in self.names(kind)]
            except ExecutorError as error:
                leftovers.append(f"{kind}/? ({error})")
        return deleted, leftovers


def clean_runs(spec: Environment, api_client: Any, run_id: str | None = None, timeout_s: float = 60.0,
               grace_s: float = 5.0) -> tuple[list[str], list[str]]:
    """`dcforge clean`: delete every object of any run (labelled `dcforge.io/run`), or of run `run_id` only, in the
    environment's acceptance namespace. Returns (deleted, leftovers) as `Kind/name`; ExecutorError (one line)
    when the cluster cannot be asked at all."""
    from dcforge.manifests.common import acceptance_namespace

    value = run_label_value(run_id) if run_id is not None else None
    objects = LabelledObjects(api_groups(api_client), acceptance_namespace(spec), RUN_LABEL, value)
    objects.names(DELETE_ORDER[0])  # an unreachable cluster or a refused request: an error, not "nothing left"
    return objects.delete_all(timeout_s, grace_s)


class _Watch:
    """List then watch one resource in the namespace, keeping the latest object per name; resumes after a
    timeout or a broken connection, re-listing (410 Gone) when its resource version is too old. A failure is
    kept in `error` (one line) until the watch works again; `fatal` when retrying cannot help (401, 403, 404)."""

    def __init__(self, execution: "KubernetesExecution", what: str, list_method: Callable[..., Any],
                 label_selector: str, keep: Callable[[dict[str, Any]], bool] = lambda obj: True):
        self.what = what
        self.objects: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.error: str | None = None
        self.fatal = False
        self.failing_since: float | None = None
        self._execution = execution
        self._list = list_method
        self._selector = label_selector
        self._keep = keep
        self._stopped = threading.Event()
        self._watch: Any = None
        self._response: Any = None
        """The watch stream's HTTP response, so that `stop` can end a blocked read."""
        self.thread = threading.Thread(target=self._run, name=f"watch-{what}", daemon=True)

    def start(self) -> "_Watch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()
        # Watch.stop ends a stream only at its next event: where none comes (an execution whose start failed before
        # any pod), the open stream would hold its connection for WATCH_S. Shutting the response down ends the
        # blocked read now (urllib3's shutdown is made for a read in another thread).
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # noqa: BLE001 (already closed or finished: nothing left to end)
                pass

    def _run(self) -> None:
        namespace = self._execution.target.namespace
        while not self._stopped.is_set():
            try:
                self._list_and_watch(namespace)
            except Exception as error:  # noqa: BLE001 (a broken watch is resumed: the list re-syncs what was missed)
                status = getattr(error, "status", None)
                self.error = str(api_error(f"watching {self.what} in namespace {namespace}", error))
                self.fatal = status in (401, 403, 404)
                self.failing_since = self.failing_since or time.monotonic()
                if self._stopped.wait(0.5):
                    return

    def _list_and_watch(self, namespace: str) -> None:
        from kubernetes import watch

        listing = json.loads(self._execution.call(
            self._list, namespace, label_selector=self._selector, _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT).data)
        fresh = {o["metadata"]["name"]: o for o in listing.get("items") or [] if self._keep(o)}
        with self._execution.lock:
            self.deleted.update(set(self.objects) - set(fresh))
            self.objects = fresh
        self._watch = watch.Watch()
        if self._stopped.is_set():  # stopped while listing (an execution whose start failed): open no watch
            return

        @functools.wraps(self._list)  # the Watch reads the list method's docstring for its return type
        def list_keeping_the_response(*args: Any, **kwargs: Any) -> Any:
            self._response = self._list(*args, **kwargs)
            if self._stopped.is_set():  # stopped while the request was on its way
                self._response.shutdown()
            return self._response

        self._execution.count_request()
        for event in self._watch.stream(
                list_keeping_the_response, namespace, label_selector=self._selector,
                resource_version=(listing.get("metadata") or {}).get("resourceVersion"),
                timeout_seconds=WATCH_S, deserialize=False, _request_timeout=(5.0, WATCH_S + 10.0)):
            self.error, self.fatal, self.failing_since = None, False, None  # the watch works
            self._apply(event)
            if self._stopped.is_set():
                return
        self.error, self.fatal, self.failing_since = None, False, None

    def _apply(self, event: dict[str, Any]) -> None:
        obj = event.get("object") or {}
        kind = event.get("type")
        if kind == "ERROR":
            raise RuntimeError(f"watch error: {obj.get('message')}")  # 410 Gone: re-list
        name = (obj.get("metadata") or {}).get("name")
        if not name or kind not in ("ADDED", "MODIFIED", "DELETED") or not self._keep(obj):
            return
        with self._execution.lock:
            if kind == "DELETED":
                self.objects.pop(name, None)
                self.deleted.add(name)
            else:
                self.objects[name] = obj
        self._execution.changed.set()


class KubernetesExecution:
    """One run's objects on the cluster; a context manager whose exit deletes them all."""

    def __init__(self, target: Target, workload: Workload, run_dir: Path, api_client: Any,
                 grace_s: float = 5.0, stop_timeout_s: float = 30.0,
                 unschedulable_grace_s: float = UNSCHEDULABLE_GRACE_S):
        self.target = target
        self.workload = workload
        self.run_dir = run_dir
        self.grace_s = grace_s
        self.stop_timeout_s = stop_timeout_s
        self.unschedulable_grace_s = unschedulable_grace_s
        self._unschedulable_since: dict[str, float] = {}
        self.api_requests = 0
        """API requests made so far (a watch counts once per (re)connection)."""
        self.leftovers: list[str] = []
        """Objects `stop` could not delete within its time (Kind/name), for the report."""
        self.startup_s: float | None = None
        """Seconds from `start` to the first moment every node's pod had run (Running, or already Succeeded):
        object creation, scheduling, the image, the container start. None until then."""
        self.cleanup_s: float | None = None
        """Seconds `stop` took to delete every object and see it gone."""
        self._started = time.monotonic()  # the executor starts an execution as soon as it makes one
        self.lock = threading.RLock()
        self.changed = threading.Event()
        self.leader_addresses: dict[str, str] = {}
        self._apis = api_groups(api_client)
        self.objects = LabelledObjects(self._apis, target.namespace, EXECUTION_LABEL, target.scope, self.call)
        self._selector = self.objects.selector
        self._killed_pods: set[str] = set()
        self._killed_nodes: set[tuple[str, int]] = set()
        self._replacing: set[tuple[str, int]] = set()
        """Nodes whose pod dcforge deleted and the Job replaces (`Role.replacements`): pending until the new pod."""
        self._replacements_left = {role.name: role.replacements for role in workload.roles}
        self._final: dict[tuple[str, int], NodeStatus] = {}
        self._pod_of: dict[tuple[str, int], str] = {}
        self._logs_saved: set[tuple[str, int]] = set()
        self._stopped = False
        self._secret: str | None = None
        """The execution's Secret, once created: deleted by name (the executor may not list Secrets)."""
        self._pods: _Watch | None = None
        self._events: _Watch | None = None
        self._made: list[tuple[str, str]] = []
        """(kind, name) of every object this execution created: `stop` deletes them by name and its pods as the
        pod watch sees them, rather than listing every kind (most of node_level's requests at 1,000 nodes)."""

    # --- API plumbing ------------------------------------------------------------------------------------------

    def count_request(self) -> None:
        with self.lock:
            self.api_requests += 1

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.count_request()
        return method(*args, **kwargs)

    def _create(self, obj: dict[str, Any]) -> dict[str, Any]:
        what = f"creating {obj['kind']}/{obj['metadata']['name']} in namespace {self.target.namespace}"
        # before the request: one that times out may still have made it
        self._made.append((obj["kind"], obj["metadata"]["name"]))
        try:
            response = self.call(self.objects.method("create", obj["kind"]), self.target.namespace, obj,
                                 _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except Exception as error:  # noqa: BLE001 (ApiException, urllib3 errors: reported in one line)
            raise api_error(what, error) from None
        return json.loads(response.data)

    # --- start -------------------------------------------------------------------------------------------------

    def start(self) -> "KubernetesExecution":
        try:
            for obj in prerequisite_objects(self.target, self.workload):
                created = self._create(obj)
                if obj["kind"] == "Service":
                    role = obj["metadata"]["labels"][ROLE_LABEL]
                    address = (created.get("spec") or {}).get("clusterIP")
                    if not address or address == "None":
                        raise ExecutorError(f"Service {obj['metadata']['name']} got no cluster IP")
                    for declared in self.workload.roles:
                        if run_label_value(declared.name) == role:
                            self.leader_addresses[declared.name] = address
            core = self._apis["CoreV1Api"]
            self._pods = _Watch(self, "pods", core.list_namespaced_pod, self._selector).start()
            controllers = [self._create(obj) for obj in
                           workload_objects(self.target, self.workload, self.leader_addresses)]
            secret = workload_secret(self.target, self.workload, controllers[0])
            if secret is not None:
                self._secret = secret["metadata"]["name"]
                self._create(secret)
        except BaseException:
            self.stop()
            raise
        return self

    def _is_our_event(self, event: dict[str, Any]) -> bool:
        """Admission rejections of our pods: FailedCreate on one of our Jobs or a Deployment's ReplicaSet."""
        return event.get("reason") == "FailedCreate" and any(
            made_by(event.get("involvedObject") or {}, name, is_server(role))
            for role in self.workload.roles for name in job_names(self.target, role))

    # --- status ------------------------------------------------------------------------------------------------

    def _pods_of(self, role_name: str) -> list[dict[str, Any]]:
        label = run_label_value(role_name)
        pods = [p for p in (self._pods.objects.values() if self._pods else ())
                if ((p.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL) == label
                and self.objects.matches(p)]
        return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))

    def _current_pod(self, role_name: str, index: int, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
        role = next(r for r in self.workload.roles if r.name == role_name)
        if is_server(role):
            live = [p for p in pods if p["metadata"]["name"] not in self._killed_pods]
            return live[index] if index < len(live) else None
        mine = [p for p in pods if _index_of(p) == index]
        if (role_name, index) in self._replacing:  # the killed pod is gone for good: the Job's new one, if any
            mine = [p for p in mine if p["metadata"]["name"] not in self._killed_pods]
        return mine[-1] if mine else None

    def _is_server(self, role_name: str) -> bool:
        return is_server(next(r for r in self.workload.roles if r.name == role_name))

    def _rejection(self, role_name: str) -> str:
        if self._events is None:  # needed only while a pod is missing: most executions never list the events
            if self._stopped or time.monotonic() - self._started < EVENTS_WATCH_AFTER_S:
                return ""
            self._events = _Watch(self, "events", self._apis["CoreV1Api"].list_namespaced_event, "",
                                  keep=self._is_our_event).start()
        role = next(r for r in self.workload.roles if r.name == role_name)
        names = job_names(self.target, role)
        for event in (self._events.objects.values() if self._events else ()):
            involved = event.get("involvedObject") or {}
            if any(made_by(involved, name, is_server(role)) for name in names):
                return one_line(f"{involved.get('kind')} {involved.get('name')}: FailedCreate: "
                                f"{event.get('message') or ''}")
        return ""

    def _check_watches(self) -> None:
        """ExecutorError when a watch cannot work (no permission) or has failed for WATCH_FAILURE_S: statuses
        would otherwise stand still until the timeout."""
        for watcher in (self._pods, self._events):
            if watcher is None or watcher.error is None:
                continue
            if watcher.fatal or time.monotonic() - (watcher.failing_since or time.monotonic()) > WATCH_FAILURE_S:
                raise ExecutorError(watcher.error)

    def statuses(self) -> list[NodeStatus]:
        self._check_watches()
        return self._current_statuses()

    def _current_statuses(self) -> list[NodeStatus]:
        """What the watches saw, without judging whether they still work (for killing and cleaning up)."""
        out = []
        with self.lock:
            for role in self.workload.roles:
                pods = self._pods_of(role.name)
                for index in range(role.nodes):
                    out.append(self._node_status(role.name, index, pods))
        if self.startup_s is None and all(s.state in (NodeState.RUNNING, NodeState.SUCCEEDED) for s in out):
            self.startup_s = time.monotonic() - self._started
        for status in out:
            if status.state.finished and (status.role, status.index) not in self._logs_saved:
                self._logs_saved.add((status.role, status.index))
                self._save_log(status)
        return out

    def _node_status(self, role_name: str, index: int, pods: list[dict[str, Any]]) -> NodeStatus:
        key = (role_name, index)
        if key in self._final:
            return self._final[key]
        pod = self._current_pod(role_name, index, pods)
        if pod is not None:
            self._pod_of[key] = pod["metadata"]["name"]
        host = self._pod_of.get(key) or f"{object_name(self.target, role_name)}/{index}"
        address = ((pod or {}).get("status") or {}).get("podIP") or ""
        status = NodeStatus(role_name, index, host, address, log_path=self.run_dir / f"{role_name}-{index}.log",
                            kubernetes_node=((pod or {}).get("spec") or {}).get("nodeName") or "")
        if pod is not None and pod["metadata"]["name"] in self._killed_pods or pod is None and key in \
                self._killed_nodes:
            status.state, status.reason = NodeState.KILLED, "deleted by dcforge"
        elif pod is not None:
            status.state, status.exit_code, status.reason = pod_state(
                pod, self._unschedulable_for(pod["metadata"]["name"], is_unschedulable(pod)),
                self.unschedulable_grace_s)
        elif (key in self._pod_of and self._pods is not None and self._pod_of[key] in self._pods.deleted
              and not self._is_server(role_name)  # a server's Deployment replaces a pod: the node is pending
              and key not in self._replacing):  # so does a Job with replacements left, for a pod dcforge deleted
            # gone without dcforge deleting it: evicted, preempted, or its Job ended (activeDeadlineSeconds)
            status.state, status.reason = NodeState.FAILED, f"pod {self._pod_of[key]} was deleted, not by dcforge"
        elif rejection := self._rejection(role_name):
            status.state, status.reason = NodeState.FAILED, rejection
        if status.state.finished:
            self._final[key] = status
        return status

    def _unschedulable_for(self, pod: str, unschedulable: bool) -> float:
        """Seconds since the pod was first seen Unschedulable (0 when it is not)."""
        if not unschedulable:
            self._unschedulable_since.pop(pod, None)
            return 0.0
        return time.monotonic() - self._unschedulable_since.setdefault(pod, time.monotonic())

    def _save_log(self, status: NodeStatus) -> None:
        pod = self._pod_of.get((status.role, status.index))
        if pod is None or status.log_path is None:
            return
        try:
            status.log_path.write_text(self._read_log(pod))
        except (ExecutorError, OSError):
            pass  # a pod that never started has no log

    def _read_log(self, pod: str) -> str:
        try:
            response = self.call(self._apis["CoreV1Api"].read_namespaced_pod_log, pod, self.target.namespace,
                                 _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except Exception as error:  # noqa: BLE001
            raise api_error(f"reading the log of pod {pod}", error) from None
        return response.data.decode("utf-8", errors="replace")

    # --- the Execution verbs -----------------------------------------------------------------------------------

    def wait(self, timeout_s: float | None = None, on_status: StatusCallback | None = None,
             poll_s: float = 0.2, roles: Collection[str] | None = None) -> ExecutionOutcome:
        return wait_loop(self, timeout_s if timeout_s is not None else self.workload.timeout_s, on_status, poll_s,
                         self._terminate_all, roles)

    def wait_ready(self, role: str) -> None:
        """Every node of `role` Ready (its readinessProbe passed) or, for a log-line readiness, the line in its
        log; ExecutorError naming the pod when it fails first or the time runs out."""
        declared = next((r for r in self.workload.roles if r.name == role), None)
        if declared is None:
            raise KeyError(f"workload {self.workload.name!r} has no role {role!r}")
        readiness = declared.readiness
        if readiness is None:
            return
        deadline = time.monotonic() + readiness.timeout_s
        while True:
            # every node ready in one snapshot: a server's pods may change index when the Deployment replaces one
            waiting = []
            for status in [s for s in self.statuses() if s.role == role]:
                if status.state.finished:
                    raise ExecutorError(f"{status.node_id} on {status.host} exited ({status.state.value}) before it "
                                        f"was ready" + (f": {status.reason}" if status.reason else ""))
                if not (status.state is NodeState.RUNNING and self._is_ready(role, status, readiness.log_line)):
                    waiting.append(status)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                node = waiting[0]
                what = f"port {readiness.port}" if readiness.port else f"log line {readiness.log_line!r}"
                raise ExecutorError(f"{node.node_id} on {node.host} not ready ({what}) within "
                                    f"{readiness.timeout_s:g} s")
            self.changed.wait(0.5)
            self.changed.clear()

    def _is_ready(self, role: str, status: NodeStatus, log_line: str | None) -> bool:
        if log_line is not None:
            try:
                return log_line in self._read_log(status.host)
            except ExecutorError:
                return False
        with self.lock:
            pod = self._pods.objects.get(status.host) if self._pods else None
        return pod is not None and pod_condition(pod, "Ready").get("status") == "True"

    def kill_node(self, role: str, index: int) -> None:
        """Delete the node's pod at once (no grace): what a lost machine looks like to the other ranks. A server
        role's Deployment replaces the pod: the node is pending again until the new pod runs (its replicas are
        interchangeable, so the new pod may take another index); so does the Job of a role with `replacements`
        left (the new pod has the same index); otherwise the node stays killed."""
        key = (role, index)
        if not any(r.name == role and 0 <= index < r.nodes for r in self.workload.roles):
            raise KeyError(f"workload {self.workload.name!r} has no node {role}/{index}")
        with self.lock:
            pod = self._current_pod(role, index, self._pods_of(role))
            if not self._is_server(role) and self._replacements_left[role] > 0 and pod is not None:
                self._replacements_left[role] -= 1
                self._replacing.add(key)
            elif not self._is_server(role):
                self._killed_nodes.add(key)
            if pod is not None:
                self._killed_pods.add(pod["metadata"]["name"])
        if pod is not None:
            self.objects.delete("Pod", pod["metadata"]["name"], grace_s=0)

    def isolate_node(self, role: str, index: int, restore_after_s: float) -> None:
        """Deleting the pod is both at once: its processes and its network namespace go (nothing to restore)."""
        self.kill_node(role, index)

    def read_log(self, role: str, index: int) -> str:
        """The log of the node's current pod so far, read through the API; "" while it has no pod or its container
        has not started (the API answers 400 then)."""
        status = next(s for s in self._current_statuses() if s.role == role and s.index == index)
        pod = self._pod_of.get((role, index))
        if pod is None or status.state is NodeState.PENDING:
            return ""
        try:
            return self._read_log(pod)
        except ExecutorError as error:
            if " HTTP 400: " in str(error):  # "container ... is waiting to start": nothing logged yet
                return ""
            raise

    def read_shared(self, name: str) -> bytes:
        raise ExecutorError("reading the shared checkpoints claim needs a pod that mounts it (not yet)")

    def read_result(self, role: str, index: int, name: str) -> bytes:
        """The file `name` the node left in its results volume, read back from its pod log."""
        self._current_statuses()
        pod = self._pod_of.get((role, index))
        if pod is None:
            raise ExecutorError(f"{role}/{index}: no pod ran, so no result {name}")
        log_path = self.run_dir / f"{role}-{index}.log"
        log = log_path.read_text(errors="replace") if log_path.exists() else self._read_log(pod)
        results = parse_results(log)
        if name not in results:
            raise ExecutorError(f"{role}/{index} on pod {pod}: no result file {name} in its log")
        return results[name]

    def _terminate_all(self) -> None:
        """Kill every node still running (a failed rank or the timeout): delete the Jobs, Deployments and pods."""
        statuses = self._current_statuses()
        with self.lock:
            for status in statuses:
                if not status.state.finished:
                    self._killed_nodes.add((status.role, status.index))
                    if status.host in (self._pods.objects if self._pods else {}):
                        self._killed_pods.add(status.host)
        for kind in [kind for kind in ("Job", "Deployment", "Pod") if kind in self._kinds_made()]:
            for name in self.objects.names(kind):
                self.objects.delete(kind, name, grace_s=self.grace_s if kind == "Pod" else None)

    def stop(self) -> None:
        """Delete every object labelled with the execution, controllers first; wait until none is left, at most
        `stop_timeout_s`; what is left then is in `leftovers`. Idempotent; never raises."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._current_statuses()  # final states and logs before the pods go
        except Exception:  # noqa: BLE001 (cleanup must go on)
            pass
        cleanup_started = time.monotonic()
        leftover_secret = []
        if self._secret is not None:
            try:
                self.objects.delete("Secret", self._secret)
            except ExecutorError:  # its owner's deletion removes it too (garbage collector)
                leftover_secret = [f"Secret/{self._secret}"]
        if self._pods is not None and self._pods.error is None and self._pods.thread.is_alive():
            self.leftovers = self._delete_made()
        else:  # the pod watch cannot tell which pods are left: list every kind this execution may have labelled
            _, self.leftovers = self.objects.delete_all(self.stop_timeout_s, self.grace_s, kinds=self._kinds_made())
        self.leftovers += leftover_secret
        self.cleanup_s = time.monotonic() - cleanup_started
        for watcher in (self._pods, self._events):
            if watcher is not None:
                watcher.stop()

    def _kinds_made(self) -> set[str]:
        """The kinds this execution may have labelled objects of: what it created, and its controllers' pods."""
        return {"Pod"} | {kind for kind, _ in self._made}

    def _delete_made(self) -> list[str]:
        """`stop` with a working pod watch: the controllers by name, then every pod the watch shows until it shows
        none, then the rest by name (in DELETE_ORDER), without listing anything; what is left after
        `stop_timeout_s`, as `Kind/name`. The run's own cleanup at its end lists every kind once more."""
        deadline = time.monotonic() + self.stop_timeout_s
        made = sorted((o for o in self._made if o[0] in DELETE_ORDER), key=lambda o: DELETE_ORDER.index(o[0]))
        failed: list[str] = []

        def delete(kind: str, name: str) -> None:
            try:
                self.objects.delete(kind, name, grace_s=self.grace_s if kind == "Pod" else None)
            except ExecutorError:
                failed.append(f"{kind}/{name}")

        for kind, name in made:
            if kind in ("Job", "Deployment"):
                delete(kind, name)
        asked: set[str] = set()
        while True:
            with self.lock:
                # the selector, also where the server did not apply it (as `_pods_of`)
                pods = {name for name, pod in (self._pods.objects.items() if self._pods is not None else ())
                        if self.objects.matches(pod)}
            for pod in sorted(pods - asked):
                asked.add(pod)
                delete("Pod", pod)
            if not pods or time.monotonic() >= deadline:
                break
            time.sleep(0.1)  # the watch reports each pod's deletion; no request while waiting
        for kind, name in made:
            if kind not in ("Job", "Deployment"):
                delete(kind, name)
        return failed + [f"Pod/{pod}" for pod in sorted(pods)]

    def __enter__(self) -> "KubernetesExecution":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _takes_pods(node: dict[str, Any], wanted: dict[str, str], tolerations: list[dict[str, str]]) -> bool:
    """Ready, not cordoned, carrying every `wanted` label (the selector, also where the server did not apply it),
    and no NoSchedule/NoExecute taint the pods do not tolerate (e.g. `accept --taint-failed`'s): a pod pinned there
    would only wait Unschedulable."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    spec = node.get("spec") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or [])
    repelled = any(taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(taint, tolerations)
                   for taint in spec.get("taints") or [])
    return ready and not spec.get("unschedulable") and not repelled and all(
        labels.get(key) == value for key, value in wanted.items())


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, str]]) -> bool:
    """Kubernetes' toleration match: same key (or none), same effect (or none), value equal unless `Exists`."""
    return any(t.get("key") in (None, taint.get("key")) and t.get("effect") in (None, "", taint.get("effect"))
               and (t.get("operator") == "Exists" or t.get("value") == taint.get("value")) for t in tolerations)


def _index_of(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    found = meta.get("labels") or {}
    value = found.get(NODE_INDEX_LABEL) or found.get(JOB_INDEX_LABEL) or \
        (meta.get("annotations") or {}).get(JOB_INDEX_LABEL)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class KubernetesExecutor:
    """Runs every workload as Kubernetes objects in the environment's acceptance namespace, on its acceptance
    pool (or `pool`), in the image `dcforge:acceptance.image`."""

    name = "kubernetes"

    def __init__(self, spec: Environment, run_id: str, api_client: Any = None, *, kubeconfig: str | None = None,
                 context: str | None = None, pool: str | None = None, grace_s: float = 5.0,
                 stop_timeout_s: float = 30.0, unschedulable_grace_s: float = UNSCHEDULABLE_GRACE_S,
                 nodes: Sequence[str] = ()):
        try:
            self.target = dataclasses.replace(target_for(spec, run_id, pool), nodes=tuple(nodes))
        except ObjectError as error:
            raise ExecutorError(str(error)) from None
        self._api_client = api_client
        self._kubeconfig, self._context = kubeconfig, context
        self.grace_s, self.stop_timeout_s = grace_s, stop_timeout_s
        self.unschedulable_grace_s = unschedulable_grace_s

    @property
    def nodes(self) -> tuple[str, ...]:
        """The Kubernetes nodes the workloads are pinned to (node names); empty when not pinned."""
        return self.target.nodes

    def pinned(self, nodes: Sequence[str]) -> "KubernetesExecutor":
        """The same executor with every role on exactly `nodes` (one pod on each; see `pinning`)."""
        other = copy.copy(self)
        other.target = dataclasses.replace(self.target, nodes=tuple(nodes))
        return other

    def tolerating(self, tolerations: Sequence[dict[str, str]]) -> "KubernetesExecutor":
        """The same executor whose pods also tolerate `tolerations` (and whose `pool_nodes` counts nodes with
        those taints)."""
        other = copy.copy(self)
        other.target = dataclasses.replace(self.target, tolerations=(*self.target.tolerations, *tolerations))
        return other

    def pool_nodes(self) -> list[str]:
        """The pool's nodes that can take a pod now, by name: carrying the pool's labels (the pods' nodeSelector),
        Ready, not cordoned, no taint the pods do not tolerate. One request, exactly NODE_LIST_ACCESS; ExecutorError
        (one line) when it fails."""
        from kubernetes import client

        pool = self.target.pool
        wanted = pool_selector(pool) if pool is not None else {}
        tolerations = tolerations_for(self.target)
        selector = ",".join(f"{key}={value}" for key, value in wanted.items())
        try:
            response = client.CoreV1Api(self._client()).list_node(
                label_selector=selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except Exception as error:  # noqa: BLE001 (ApiException, urllib3 errors: reported in one line)
            raise api_error(f"listing the nodes labelled {selector or '(any)'}", error) from None
        items = json.loads(response.data).get("items") or []
        return sorted(n["metadata"]["name"] for n in items if _takes_pods(n, wanted, tolerations))

    def _client(self) -> Any:
        """The API client: the one given, else one from the kubeconfig, made on first use and kept."""
        if self._api_client is None:
            self._api_client = client_from_kubeconfig(self._kubeconfig, self._context)
        return self._api_client

    @property
    def node_resources(self) -> Resources:
        """What each node of a multi-node workload asks for: a whole machine of the pool (`node_resources`)."""
        return node_resources(self.target)

    def start(self, workload: Workload, run_dir: Path) -> KubernetesExecution:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            execution = KubernetesExecution(execution_target(self.target, workload), workload, run_dir,
                                            self._client(), self.grace_s,
                                            self.stop_timeout_s, self.unschedulable_grace_s)
            return execution.start()
        except ObjectError as error:
            raise ExecutorError(str(error)) from None
