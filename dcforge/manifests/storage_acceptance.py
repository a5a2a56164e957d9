"""The storage check on the Kubernetes target: one PVC per storage class and fio client pods, built from the very
fio jobs the local check runs (the check passes its `class_plan`s in).

Per class: a PVC of that StorageClass (ReadWriteMany for shared-filesystem classes, ReadWriteOnce for block), a
`probe` pod running the single-client jobs one after the other, and the aggregate write: `clients` pods with one
fio process each on a shared filesystem, or one pod with `clients` fio processes on a block volume (a
ReadWriteOnce volume can be mounted by one node only). Every object carries the run's label, so
`kubectl delete pod,pvc -l <RUN_LABEL>=<run id>` removes the whole run. Pods satisfy the `restricted` Pod
Security Standard of the acceptance namespace.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dcforge.manifests.common import acceptance_namespace, metadata
from dcforge.manifests.acceptance import HARNESS_NAME
from dcforge.spec.models import Environment, StorageClassSpec

if TYPE_CHECKING:  # the check builds the plans and calls this module; nothing here imports a check at run time
    from dcforge.checks.storage import ClassPlan

RUN_LABEL = "dcforge.io/storage-run"
CLASS_LABEL = "dcforge.io/storage-class"
MOUNT_PATH = "/data"
# A non-root user every fio image can run as; fsGroup makes the fresh volume writable for it.
POD_USER = 65532
POD_DEADLINE_S = 1800


def access_mode(cls: StorageClassSpec) -> str:
    return "ReadWriteMany" if cls.kind == "filesystem" else "ReadWriteOnce"


def test_pvc(spec: Environment, cls: StorageClassSpec, run_id: str, size_gi: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": metadata(f"storage-test-{cls.name}", acceptance_namespace(spec),
                             labels={RUN_LABEL: run_id, CLASS_LABEL: cls.name}),
        "spec": {"storageClassName": cls.name, "accessModes": [access_mode(cls)], "volumeMode": "Filesystem",
                 "resources": {"requests": {"storage": f"{size_gi}Gi"}}},
    }


def fio_pod(spec: Environment, cls: StorageClassSpec, run_id: str, name: str, image: str,
            commands: list[list[str]]) -> dict[str, Any]:
    """A pod that runs fio commands in sequence on the class's PVC; each prints its JSON report to the log."""
    script = " && ".join(shlex.join(["fio", *command]) for command in commands)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": metadata(f"storage-{cls.name}-{name}", acceptance_namespace(spec),
                             labels={RUN_LABEL: run_id, CLASS_LABEL: cls.name}),
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": POD_DEADLINE_S,
            "serviceAccountName": HARNESS_NAME,  # not the namespace's default account (rule DCF-POD-014)
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": POD_USER, "runAsGroup": POD_USER,
                                "fsGroup": POD_USER, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "fio", "image": image, "command": ["sh", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
                "volumeMounts": [{"name": "data", "mountPath": MOUNT_PATH}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": f"storage-test-{cls.name}"}}],
        },
    }


def storage_acceptance_manifests(spec: Environment, plans: dict[str, "ClassPlan"], image: str, clients: int,
                                 pvc_size_gi: int, run_id: str) -> list[dict[str, Any]]:
    """PVC and client pods per class; `plans` are the check's fio jobs per class, built for MOUNT_PATH."""
    by_name = {cls.name: cls for cls in spec.storage.classes}
    objects: list[dict[str, Any]] = []
    for name, plan in plans.items():
        cls = by_name[name]
        objects.append(test_pvc(spec, cls, run_id, pvc_size_gi))
        single = [plan.seq_write, plan.seq_read, plan.rand_read, plan.rand_write, plan.fsync, plan.verify_write,
                  plan.verify_read]
        objects.append(fio_pod(spec, cls, run_id, "probe", image, [job.args() for job in single]))
        if cls.kind == "filesystem":
            for client in range(clients):
                job = replace(plan.aggregate, name=f"aggregate-{client}", numjobs=1)
                objects.append(fio_pod(spec, cls, run_id, f"client-{client}", image, [job.args()]))
        else:
            objects.append(fio_pod(spec, cls, run_id, "clients", image, [plan.aggregate.args()]))
    return objects


def cleanup_selector(run_id: str) -> str:
    """The label selector that deletes every object of one run (`kubectl delete pod,pvc -l ...`)."""
    return f"{RUN_LABEL}={run_id}"


def write_manifests(objects: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return path
