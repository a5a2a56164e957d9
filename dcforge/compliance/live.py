"""Reading the objects a live cluster runs, for the same rules: `kubectl get ... -o json` and the scope dcforge owns.

On a cluster the rules also see what Helm charts created (the GPU Operator's DaemonSets, Rook's OSDs), which is
where the namespace-scoped exceptions apply. Judged: the namespaces dcforge created and everything in them, and the
cluster-scoped objects dcforge manages; kube-system and other components' cluster roles are someone else's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from dcforge.harness.processes import run_bounded
from dcforge.manifests.common import MANAGED_BY_LABEL, MANAGED_BY_VALUE

LIVE_RESOURCES = (
    "namespaces", "pods", "services", "serviceaccounts", "resourcequotas", "limitranges",
    "deployments.apps", "statefulsets.apps", "daemonsets.apps", "jobs.batch", "cronjobs.batch",
    "ingresses.networking.k8s.io", "networkpolicies.networking.k8s.io", "poddisruptionbudgets.policy",
    "roles.rbac.authorization.k8s.io", "rolebindings.rbac.authorization.k8s.io",
    "clusterroles.rbac.authorization.k8s.io", "clusterrolebindings.rbac.authorization.k8s.io",
    "storageclasses.storage.k8s.io",
)
# Custom resources the rules judge; absent when their operator is not installed, which is not an error.
OPTIONAL_RESOURCES = ("cephclusters.ceph.rook.io",)


class KubectlError(RuntimeError):
    """kubectl is missing, timed out, or refused the request (message says which and how to fix)."""


def kubectl_get(kubectl: str, resources: tuple[str, ...], workdir: Path, timeout_s: float,
                context: str | None = None, kubeconfig: str | None = None) -> list[dict[str, Any]]:
    """Items of `kubectl get <resources> --all-namespaces -o json` (JSON on stdout, diagnostics kept apart)."""
    executable = shutil.which(kubectl)
    if executable is None:
        raise KubectlError(f"{kubectl!r} not found on PATH: install kubectl or set compliance source 'synth'")
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = workdir / "kubectl.json", workdir / "kubectl.stderr"
    args = [executable, "get", ",".join(resources), "--all-namespaces", "-o", "json"]
    if context:
        args += ["--context", context]
    if kubeconfig:
        args += ["--kubeconfig", kubeconfig]
    # The shell only redirects: stdout must stay pure JSON while kubectl's warnings go to stderr.
    env = {**os.environ, "DCFORGE_KUBECTL_OUT": str(out), "DCFORGE_KUBECTL_ERR": str(err)}
    try:
        code = run_bounded(["sh", "-c", 'exec "$@" >"$DCFORGE_KUBECTL_OUT" 2>"$DCFORGE_KUBECTL_ERR"', "sh", *args],
                           timeout_s=timeout_s, env=env)
    except TimeoutError:
        raise KubectlError(f"kubectl get did not answer within {timeout_s:.0f} s") from None
    if code != 0:
        detail = err.read_text(errors="replace").strip().splitlines()
        raise KubectlError(f"kubectl get {','.join(resources)} exited {code}: {detail[-1] if detail else ''}")
    try:
        return list(json.loads(out.read_text()).get("items", []))
    except json.JSONDecodeError as error:
        raise KubectlError(f"kubectl printed no JSON list: {error}") from None


def cluster_objects(kubectl: str, workdir: Path, timeout_s: float, context: str | None = None,
                    kubeconfig: str | None = None) -> list[dict]:
    objects = kubectl_get(kubectl, LIVE_RESOURCES, workdir / "core", timeout_s, context, kubeconfig)
    for resource in OPTIONAL_RESOURCES:
        try:
            objects += kubectl_get(kubectl, (resource,), workdir / resource, timeout_s, context, kubeconfig)
        except KubectlError:
            pass  # the CRD is not installed here
    return objects


def managed_scope(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What dcforge is answerable for: its namespaces and their contents, its cluster-scoped objects.

    Pods owned by a controller are left out: their Deployment/DaemonSet/Job is judged once instead of every replica.
    """
    def labels(obj: dict) -> dict:
        return (obj.get("metadata") or {}).get("labels") or {}

    managed = {obj["metadata"]["name"] for obj in objects
               if obj.get("kind") == "Namespace" and labels(obj).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE}
    scoped = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        if obj.get("kind") == "Namespace":
            keep = meta.get("name") in managed
        elif namespace is not None:
            keep = namespace in managed and not (obj.get("kind") == "Pod" and meta.get("ownerReferences"))
        else:
            keep = labels(obj).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
        if keep:
            scoped.append(obj)
    return scoped
