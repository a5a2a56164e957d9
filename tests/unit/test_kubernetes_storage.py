"""`storage` on target kubernetes: one pod per storage class, on a claim of that class, measuring it with the
check's own fio phases (`python -m dcforge.checks.storage`).

The pod's record is real: the same entry point runs first on this machine (real fio on a temporary directory), and
its result becomes the log of each class's pod that the stand-in kubelet plays on the fake API server
(tests/kube_fake.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from dcforge.checks.storage import StorageCheckConfig  # noqa: E402
from dcforge.executors.pod_results import result_lines  # noqa: E402
from dcforge.paths import REPO_ROOT  # noqa: E402
from tests.kube_fake import FakeCluster  # noqa: E402
from tests.unit.test_kubernetes_accept import NS, Kubelet, accept_only, labelled  # noqa: E402
from workloads.records import STORAGE_CLASS_FILE, StorageClassResult, read_result_file  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (make system-deps)")

SETTINGS = StorageCheckConfig.model_validate({"fileSizeMib": 16, "phaseSeconds": 0.5, "clients": 2,
                                              "metadataFiles": 50, "verifySizeMib": 4})
CLASSES = ("local-path-checkpoints", "shared-datasets")
TWO_CLASSES = {
    "      - {name: local-path-checkpoints, kind: block, purpose: checkpoints, replication: 1, default: true}\n":
    "      - {name: local-path-checkpoints, kind: block, purpose: checkpoints, replication: 1, default: true}\n"
    "      - {name: shared-datasets, kind: filesystem, purpose: datasets, replication: 1}\n"}
"""The cluster environment with a second, shared-filesystem class (its storage settings ask for 2 Gi claims)."""


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> StorageClassResult:
    """The record a storage pod writes, from a real run of its entry point on a directory of this machine."""
    folder = tmp_path_factory.mktemp("storage-pod")
    output = folder / STORAGE_CLASS_FILE
    done = subprocess.run([sys.executable, "-m", "dcforge.checks.storage", "--class", CLASSES[0], "--directory",
                           str(folder / "claim"), "--settings", SETTINGS.model_dump_json(by_alias=True),
                           "--budget-s", "60", "--output", str(output)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return read_result_file(output, StorageClassResult)


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        yield fake


def test_each_storage_class_is_measured_in_a_pod_on_a_claim_of_it(cluster, tmp_path, env_file, measured):
    """Two classes, two pods one after the other, each mounting a claim of its class in the access mode the class
    offers; every figure comes from the pod's record, judged as locally; nothing labelled is left."""
    pods: dict[str, dict] = {}

    def play(started: list[str]) -> None:
        (pod,) = started
        spec = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)["spec"]
        script = spec["containers"][0]["command"][2]
        (name,) = [name for name in CLASSES if f"--class {name} " in script]
        pods[name] = spec
        claim = next(o for o in cluster.objects(NS) if o["kind"] == "PersistentVolumeClaim")
        pods[name]["claim"] = claim["spec"]
        record = StorageClassResult(**{**vars(measured), "name": name})
        folder = tmp_path / "pods" / name
        folder.mkdir(parents=True)
        (folder / STORAGE_CLASS_FILE).write_text(record.to_json() + "\n")
        cluster.bind_pod(NS, pod, "cpu-node-0")
        cluster.set_pod_status(NS, pod, {"phase": "Running", "podIP": "10.244.0.70"})
        cluster.write_log(NS, pod, "\n".join(result_lines(folder)) + "\n")
        cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})

    env = env_file("cluster", replace=TWO_CLASSES)
    with Kubelet(cluster, play):
        outcome, _, entry = accept_only(cluster, tmp_path, env, "storage")
    assert entry["status"] == "pass", (entry.get("reason"), outcome.output)
    for name in CLASSES:
        assert entry["metrics"][f"{name}.seq_write_gbps"]["value"] == measured.figures["seq_write_gbps"] > 0
        assert entry["metrics"][f"{name}.data_verified"]["value"] == 1
        assert entry["details"]["classes"][name]["kubernetes_node"] == "cpu-node-0"
        assert pods[name]["claim"]["storageClassName"] == name
        assert pods[name]["claim"]["resources"]["requests"]["storage"] == "2Gi"
    assert pods["local-path-checkpoints"]["claim"]["accessModes"] == ["ReadWriteOnce"]
    assert pods["shared-datasets"]["claim"]["accessModes"] == ["ReadWriteMany"]
    assert entry["details"]["classes"][CLASSES[0]]["fio"].startswith("fio-")
    assert labelled(cluster) == []


def test_a_storage_pod_that_fails_fails_its_class_and_the_next_class_still_runs(cluster, tmp_path, env_file,
                                                                                 measured):
    """The first class's pod exits 1 (its claim full): the check fails naming the class and the pod; the second
    class is measured all the same."""
    def play(started: list[str]) -> None:
        (pod,) = started
        script = next(o for o in cluster.objects(NS) if o["metadata"]["name"] == pod)["spec"]["containers"][0][
            "command"][2]
        if f"--class {CLASSES[0]} " in script:
            cluster.set_pod_status(NS, pod, {"phase": "Failed", "containerStatuses": [{
                "name": "node", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]})
            return
        folder = tmp_path / "pod"
        folder.mkdir()
        (folder / STORAGE_CLASS_FILE).write_text(StorageClassResult(**{**vars(measured), "name": CLASSES[1]})
                                                 .to_json() + "\n")
        cluster.write_log(NS, pod, "\n".join(result_lines(folder)) + "\n")
        cluster.set_pod_status(NS, pod, {"phase": "Succeeded"})

    with Kubelet(cluster, play):
        _, _, entry = accept_only(cluster, tmp_path, env_file("cluster", replace=TWO_CLASSES), "storage")
    assert entry["status"] == "fail" and f"class {CLASSES[0]}: pod dcf-node-storage-" in entry["reason"]
    assert f"{CLASSES[1]}.seq_write_gbps" in entry["metrics"]
    assert labelled(cluster) == []


def test_the_pod_entry_point_says_in_one_line_what_it_cannot_measure(tmp_path):
    """A directory that cannot be created (under a file): exit 1, one line naming the class and the path."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run([sys.executable, "-m", "dcforge.checks.storage", "--class", "x", "--directory",
                           str(blocker / "claim"), "--settings", SETTINGS.model_dump_json(by_alias=True),
                           "--budget-s", "10", "--output", str(tmp_path / "out.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and not (tmp_path / "out.json").exists()
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: class x: ") and str(blocker) in line


def test_paths_on_target_kubernetes_are_one_line_naming_the_key(cluster, tmp_path, env_file):
    env = env_file("cluster", replace={"storage: {pvcSizeGi: 2,": "storage: {paths: {local-path-checkpoints: /mnt},"
                                                                 " pvcSizeGi: 2,"})
    _, _, entry = accept_only(cluster, tmp_path, env, "storage")
    assert entry["status"] == "error" and "dcforge:acceptance.settings.storage.paths: target kubernetes" in \
        entry["reason"]
    assert not cluster.objects(NS)
