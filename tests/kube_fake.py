"""A Kubernetes API server for tests without a cluster: kmock's stateful emulator over real HTTP, in a thread.

`kmock.KubernetesEmulator` keeps objects in memory and serves create, get, list, watch, patch and delete the way
the API server does, so the official `kubernetes` client talks to it unchanged. This module adds the few things a
real API server does that the executor relies on, and nothing else:

- every created object gets `metadata.uid`, `resourceVersion` and `creationTimestamp`;
- the built-in resources exist before any object of them does (listing an empty kind is not a 404);
- a Service gets a `spec.clusterIP` from the service range (the API server's allocator);
- pod logs (`pods/log`) are served from what the test's stand-in kubelet wrote (`FakeCluster.write_log`);
- `watch=True` (how the Python client spells it) starts a watch, as on the real API server;
- a strategic-merge patch of `status.conditions` (a node's) merges by `type`, as the API server does for that
  list (kmock merges dicts only and replaces lists);
- every request is recorded as (User-Agent, verb, resource), and a User-Agent can be held to the rules of a Role
  (`FakeCluster.grant`: anything else is 403 Forbidden, as RBAC answers).

What the cluster's controllers and kubelets do (a Job creating pods, pods changing phase) the tests do themselves
through the same API (`FakeCluster.run_job_pods`, `set_pod_status`), as the real controllers would.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import itertools
import threading
import uuid
from typing import Any

import kmock

# kmock's actions -> the RBAC verbs the same request needs on a real cluster.
RBAC_VERBS = {kmock.action.LIST: "list", kmock.action.WATCH: "watch", kmock.action.FETCH: "get",
              kmock.action.CREATE: "create", kmock.action.UPDATE: "patch", kmock.action.DELETE: "delete"}


BUILT_IN_RESOURCES = ("v1/nodes", "v1/pods", "v1/services", "v1/persistentvolumeclaims", "v1/secrets", "v1/events",
                      "batch/v1/jobs", "apps/v1/deployments", "networking.k8s.io/v1/networkpolicies")


class FakeApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus uids, cluster IPs, pod logs and a record of every request."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.logs: dict[tuple[str, str], str] = {}
        self.grants: dict[str, set[tuple[str, str, str]]] = {}
        """RBAC: User-Agent -> the (api group, resource, verb) it may use; agents not listed may do anything."""
        self.requests_seen: list[tuple[str, str, str, str]] = []
        """(User-Agent, verb, api group, resource[/subresource]) of every Kubernetes request."""
        self._ips = (str(ip) for ip in itertools.islice(ipaddress.ip_network("10.96.0.0/12").hosts(), 10, None))
        self._versions = itertools.count(1)
        self[kmock.action.FETCH, kmock.resource("v1/pods"), kmock.subresource("log")] << self._serve_log
        for resource in BUILT_IN_RESOURCES:  # every cluster serves these, objects or not
            self.resources[resource] = {}

    async def __call__(self, raw_request):  # noqa: ANN001, ANN204 (kmock's signature)
        # The Go API server parses booleans with strconv.ParseBool, so the Python client's `watch=True` is a watch
        # there; kmock only recognises `watch=true`.
        if raw_request.query.get("watch") in ("True", "1"):
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request):  # noqa: ANN201 (kmock's signature)
        if request.resource is not None and request.action is not None:
            plural = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            agent, verb, group = (request.headers.get("User-Agent", ""), RBAC_VERBS.get(request.action, "?"),
                                  request.resource.group or "")
            self.requests_seen.append((agent, verb, group, plural))
            if agent in self.grants and (group, plural, verb) not in self.grants[agent]:
                raise kmock.KubernetesError(status=403, reason="Forbidden", message=(
                    f'{plural} is forbidden: User "{agent}" cannot {verb} resource "{plural}" in API group '
                    f'"{group}" in the namespace "{request.namespace}"'), details={})
            if (request.action == kmock.action.UPDATE and isinstance(request.data, dict)
                    and "strategic-merge-patch" in request.headers.get("Content-Type", "")):
                self._merge_conditions(request)
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta["resourceVersion"] = str(next(self._versions))
                meta.setdefault("creationTimestamp",
                                datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
                if request.resource.plural == "services":
                    spec = request.data.setdefault("spec", {})
                    if not spec.get("clusterIP"):
                        spec["clusterIP"] = next(self._ips)
        return await super()._handle(request)

    def _merge_conditions(self, request: kmock.Request) -> None:
        conditions = (request.data.get("status") or {}).get("conditions")
        key = (request.resource, request.namespace, request.name)
        if not isinstance(conditions, list) or key not in self._objects or self._objects[key].deleted:
            return
        stored = {c["type"]: c for c in (self._objects[key].raw.get("status") or {}).get("conditions") or []}
        for condition in conditions:
            stored[condition["type"]] = {**stored.get(condition["type"], {}), **condition}
        request.data["status"]["conditions"] = list(stored.values())

    async def _serve_log(self, request: kmock.Request) -> bytes:
        return self.logs.get((request.namespace or "", request.name or ""), "").encode()


class FakeCluster:
    """The fake API server on a loopback port, its event loop in a daemon thread; a context manager."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-kube-api", daemon=True)
        self.api: FakeApiServer | None = None
        self.url = ""

    def __enter__(self) -> "FakeCluster":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self.api = FakeApiServer()
        await self.api.__aenter__()
        self._server = kmock.Server(self.api)
        await self._server.__aenter__()
        self.url = str(self._server.url).rstrip("/")

    async def _stop(self) -> None:
        await self._server.__aexit__(None, None, None)
        await self.api.__aexit__(None, None, None)

    def __exit__(self, *exc_info) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def api_client(self, user_agent: str = "dcforge-test"):  # noqa: ANN201 (kubernetes.client.ApiClient)
        """A client of the official library pointed at this server; `user_agent` tells its requests apart."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        api = client.ApiClient(configuration)
        api.user_agent = user_agent
        return api

    def grant(self, user_agent: str, rules: list[dict[str, Any]]) -> None:
        """Let `user_agent` do exactly what these RBAC rules (a Role's `rules`) allow, and nothing else."""
        allowed = {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
                   for resource in rule["resources"] for verb in rule["verbs"]}
        self._loop.call_soon_threadsafe(self.api.grants.__setitem__, user_agent, allowed)

    def write_log(self, namespace: str, pod: str, text: str) -> None:
        self._loop.call_soon_threadsafe(self.api.logs.__setitem__, (namespace, pod), text)

    def objects(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every live object (optionally of one namespace), as stored."""
        async def collect() -> list[dict[str, Any]]:
            return [obj.raw for (_, ns, _), obj in self.api.objects.items()
                    if not obj.deleted and (namespace is None or ns == namespace)]
        return asyncio.run_coroutine_threadsafe(collect(), self._loop).result(10)

    # --- What the cluster's controllers and kubelets would do, done through the API like they do it ---------------

    def _controller(self, api: str):  # noqa: ANN202
        from kubernetes import client

        return getattr(client, api)(self.api_client("fake-controller"))

    def _read(self, api: str, method: str, namespace: str, name: str) -> dict[str, Any]:
        return json.loads(getattr(self._controller(api), method)(name, namespace, _preload_content=False).data)

    def _create_pod(self, namespace: str, name: str, template: dict[str, Any], extra_labels: dict[str, str]) -> str:
        meta = template.get("metadata") or {}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace,
                            "labels": {**(meta.get("labels") or {}), **extra_labels},
                            "annotations": dict(meta.get("annotations") or {})},
               "spec": template["spec"], "status": {"phase": "Pending"}}
        self._controller("CoreV1Api").create_namespaced_pod(namespace, pod, _preload_content=False)
        return name

    def start_job_pods(self, namespace: str, job: str) -> list[str]:
        """The Job controller: one pod per completion index of an Indexed Job, labelled with its index (a
        NonIndexed Job's pods carry no index)."""
        spec = self._read("BatchV1Api", "read_namespaced_job", namespace, job)["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        return [self._create_pod(namespace, f"{job}-{index}-{uuid.uuid4().hex[:5]}", spec["template"],
                                 {**({"batch.kubernetes.io/job-completion-index": str(index)} if indexed else {}),
                                  "job-name": job})
                for index in range(spec["completions"])]

    def add_node(self, name: str, labels: dict[str, str], ready: bool = True, unschedulable: bool = False,
                 taints: list[dict[str, str]] | None = None) -> None:
        """A Node as the kubelet registers it: its labels, its Ready condition, cordoned or not, its taints."""
        from kubernetes import client

        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                "spec": {"unschedulable": unschedulable, "taints": taints or []},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
        client.CoreV1Api(self.api_client("fake-kubelet")).create_node(node, _preload_content=False)

    def pinned_node(self, namespace: str, pod: str) -> str | None:
        """The scheduler's reading of a pod's required node affinity: the one node name it allows, if any."""
        spec = self._read("CoreV1Api", "read_namespaced_pod", namespace, pod)["spec"]
        terms = ((((spec.get("affinity") or {}).get("nodeAffinity") or {})
                  .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or [])
        names = [value for term in terms for field in term.get("matchFields") or []
                 if field["key"] == "metadata.name" and field["operator"] == "In" for value in field["values"]]
        return names[0] if len(names) == 1 else None

    def start_deployment_pods(self, namespace: str, deployment: str, count: int | None = None) -> list[str]:
        """The ReplicaSet controller: `replicas` pods of the Deployment's template (or `count`: replacing some)."""
        spec = self._read("AppsV1Api", "read_namespaced_deployment", namespace, deployment)["spec"]
        return [self._create_pod(namespace, f"{deployment}-5d8f7-{uuid.uuid4().hex[:5]}", spec["template"], {})
                for _ in range(spec["replicas"] if count is None else count)]

    def bind_pod(self, namespace: str, pod: str, node: str) -> None:
        """The scheduler placing a pod on a node (what its Binding sets: `spec.nodeName`)."""
        self._controller("CoreV1Api").patch_namespaced_pod(pod, namespace, {"spec": {"nodeName": node}},
                                                           _preload_content=False)

    def set_pod_status(self, namespace: str, pod: str, status: dict[str, Any]) -> None:
        """The kubelet (or the scheduler) reporting a pod's status."""
        self._controller("CoreV1Api").patch_namespaced_pod_status(pod, namespace, {"status": status},
                                                                  _preload_content=False)

    def add_event(self, namespace: str, kind: str, name: str, reason: str, message: str) -> None:
        """An Event as a controller records it about one of its objects."""
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
                 "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
                 "reason": reason, "message": message, "type": "Warning"}
        self._controller("CoreV1Api").create_namespaced_event(namespace, event, _preload_content=False)
