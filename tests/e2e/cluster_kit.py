"""What the multi-node tests need of the e2e cluster kit (tests/e2e/cluster, docs/e2e-cluster.md): whether
DCFORGE_E2E_KUBECONFIG is one of its clusters, its fault hooks, and where the pods of a run were placed."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

KIT = Path(__file__).parent / "cluster"
POOL = "train"
"""The pool every worker of the kit is labelled into (up.sh), declared by `pool_environment`."""


def kit_run_dir(kubeconfig: str) -> Path | None:
    """The kit's run folder when `kubeconfig` is the admin kubeconfig up.sh printed (RUN/pki/admin.kubeconfig),
    else None (another cluster: the tests that need fault hooks skip)."""
    path = Path(kubeconfig).resolve()
    run = path.parent.parent
    return run if path.name == "admin.kubeconfig" and (run / "workers").is_file() else None


def fault(run: Path, *args: str) -> None:
    """tests/e2e/cluster/fault.sh ARGS on the cluster of `run` (e.g. "rate", "dcf-worker-2", "50mbit")."""
    env = {**os.environ, "DCFORGE_CLUSTER_RUN": str(run), "DCFORGE_CLUSTER_CACHE": str(run.parent)}
    done = subprocess.run(["bash", str(KIT / "fault.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, f"fault.sh {' '.join(args)}: {done.stderr.strip()}"


def worker_names(run: Path) -> list[str]:
    return [f"dcf-worker-{i}" for i in range(1, int((run / "workers").read_text()) + 1)]


def pool_environment(base: Path, folder: Path, settings: dict[str, str]) -> Path:
    """The e2e environment file `base` with the kit's pool (one GPU a node: up.sh advertises one), taints on the
    acceptance allowed, and each check's settings replaced by `settings` (check -> flow mapping text)."""
    import yaml

    data = yaml.safe_load(base.read_text())
    config = data["config"]
    config["dcforge:gpuPools"] = [{"name": POOL, "gpuModel": "H100-SXM", "gpusPerNode": 1,
                                   "nodeCount": 3}]
    acceptance = config["dcforge:acceptance"]
    acceptance["allowNodeTaints"] = True
    for check, text in settings.items():
        acceptance["settings"][check] = yaml.safe_load(text)
        acceptance["timeoutsS"].setdefault(check, 600)
    path = folder / base.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Placements:
    """A watch on the run's pods (RUN_LABEL) in the acceptance namespace: pod -> (execution, node), as the
    scheduler bound them; a context manager."""

    def __init__(self, admin, namespace: str):  # noqa: ANN001 (kubernetes.client.ApiClient)
        self.admin, self.namespace = admin, namespace
        self.pods: dict[str, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Placements":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        from kubernetes import client, watch

        from dcforge.executors.kubernetes_objects import EXECUTION_LABEL, RUN_LABEL

        core = client.CoreV1Api(self.admin)
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(core.list_namespaced_pod, self.namespace,
                                                  label_selector=RUN_LABEL, timeout_seconds=5):
                    pod = event["object"]
                    if pod.spec.node_name:
                        self.pods[pod.metadata.name] = ((pod.metadata.labels or {}).get(EXECUTION_LABEL, ""),
                                                        pod.spec.node_name)
                    if self._stop.is_set():
                        return
            except Exception:  # noqa: BLE001 (the API server restarting: watch again)
                self._stop.wait(1)

    def by_execution(self) -> dict[str, list[str]]:
        """execution -> the nodes its pods ran on (one entry per pod)."""
        out: dict[str, list[str]] = {}
        for execution, node in self.pods.values():
            out.setdefault(execution, []).append(node)
        return out
