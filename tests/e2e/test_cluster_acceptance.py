"""`dcforge accept` on a real Kubernetes cluster (the `cluster` environment): the checks that run through the
executor, Ctrl-C, a pod that cannot be scheduled, least privilege, and live compliance of the deployed stack.
Skipped, with the reason, unless DCFORGE_E2E_KUBECONFIG names a cluster (tests/e2e/conftest.py, README)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CONTEXT, labelled_objects

pytestmark = pytest.mark.e2e

EXECUTOR_CHECKS = ("system", "train", "allreduce", "checkpoint", "train_failover", "allreduce_multinode",
                   "train_multinode", "slow_node", "network", "train_failover_multinode", "inference",
                   "inference_failover", "storage")


def dcforge(*args: str, kubeconfig: str) -> list[str]:
    context = ["--context", CONTEXT] if CONTEXT else []
    return [sys.executable, "-m", "dcforge.cli", *args, "--kubeconfig", kubeconfig, *context]


def report_dir_of(reports: Path) -> Path:
    (report_dir,) = [p for p in (reports / "cluster").iterdir() if p.is_dir()]
    return report_dir


def report_of(reports: Path) -> dict:
    return json.loads((report_dir_of(reports) / "report.json").read_text())


def test_the_checks_that_run_through_the_executor_pass_and_leave_nothing(deployed, env_file, kubeconfig, admin,
                                                                         spec, tmp_path):
    command = dcforge("accept", "--env-file", str(env_file), "--only", ",".join(EXECUTOR_CHECKS),
                      "--reports", str(tmp_path / "reports"), kubeconfig=kubeconfig)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=2400)
    report = report_of(tmp_path / "reports")
    verdicts = {c["name"]: (c["status"], c["reason"]) for c in report["checks"] if c["name"] in EXECUTOR_CHECKS}
    assert done.returncode == 0, (verdicts, done.stdout[-4000:], done.stderr[-2000:])
    assert all(status == "pass" for status, _ in verdicts.values()), verdicts
    assert all(c["details"].get("executor", "kubernetes") == "kubernetes" for c in report["checks"]
               if c["name"] in ("train", "allreduce", "checkpoint", "train_failover", "allreduce_multinode",
                                "train_multinode", "inference", "inference_failover"))
    assert labelled_objects(admin, spec) == []


def test_ctrl_c_mid_run_leaves_no_labelled_object(deployed, env_file, kubeconfig, admin, spec, tmp_path):
    from kubernetes import client

    from dcforge.executors.kubernetes_objects import RUN_LABEL
    from dcforge.manifests.common import acceptance_namespace

    command = dcforge("accept", "--env-file", str(env_file), "--only", "train_multinode",
                      "--reports", str(tmp_path / "reports"), kubeconfig=kubeconfig)
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not client.CoreV1Api(admin).list_namespaced_pod(acceptance_namespace(spec),
                                                              label_selector=RUN_LABEL).items:
            assert process.poll() is None, process.stdout.read().decode()[-4000:]
            assert time.monotonic() < deadline, "no pod of the run appeared within 120 s"
            time.sleep(0.5)
        os.kill(process.pid, signal.SIGINT)
        output = process.communicate(timeout=120)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output[-4000:]
    assert report_of(tmp_path / "reports")["status"] == "interrupted"
    assert labelled_objects(admin, spec) == []


def test_a_pod_that_cannot_be_scheduled_fails_fast_with_its_reason(deployed, spec, admin, tmp_path):
    from dcforge.executors.base import NodeState, Resources, Role, VolumePurpose, Workload
    from dcforge.executors.kubernetes import KubernetesExecutor

    role = Role("huge", ("{python}", "-c", "pass"), resources=Resources(cpus=4096, memory_mib=256))
    workload = Workload("unschedulable", (role,), volumes=(VolumePurpose.SCRATCH, VolumePurpose.RESULTS),
                        timeout_s=300)
    started = time.monotonic()
    with KubernetesExecutor(spec, "e2e-unschedulable", admin).start(workload, tmp_path) as execution:
        outcome = execution.wait(300)
    assert time.monotonic() - started < 60
    (node,) = outcome.nodes
    assert node.state is NodeState.FAILED and not outcome.timed_out
    assert node.reason.startswith(f"pod {node.host}: Unschedulable: ") and "cpu" in node.reason, node.reason
    assert execution.leftovers == [] and labelled_objects(admin, spec) == []


def test_the_executor_needs_only_the_acceptance_roles_permissions(deployed, spec, kubeconfig, tmp_path):
    """Impersonating the Acceptance ServiceAccount: its Role (generated from EXECUTOR_API_ACCESS) is all a run
    needs, results included."""
    from dcforge.executors.base import Role, Workload
    from dcforge.executors.kubernetes import KubernetesExecutor, client_from_kubeconfig
    from dcforge.manifests.common import ACCEPTANCE_SERVICE_ACCOUNT, acceptance_namespace

    account = f"system:serviceaccount:{acceptance_namespace(spec)}:{ACCEPTANCE_SERVICE_ACCOUNT}"
    api_client = client_from_kubeconfig(kubeconfig, CONTEXT)
    api_client.set_default_header("Impersonate-User", account)
    script = "import pathlib, sys; pathlib.Path(sys.argv[1], 'hello.txt').write_text('from the pod')"
    role = Role("hello", ("{python}", "-c", script, "{volume[results]}"))
    with KubernetesExecutor(spec, "e2e-least-privilege", api_client).start(Workload("hello", (role,), timeout_s=180),
                                                                           tmp_path) as execution:
        outcome = execution.wait(180)
        assert outcome.succeeded, outcome.failure_summary()
        assert execution.read_result("hello", 0, "hello.txt") == b"from the pod"
    assert execution.leftovers == []


def test_the_deployed_stack_has_no_live_compliance_violation(deployed, env_file, kubeconfig, tmp_path):
    if not deployed["applied"]:
        pytest.fail("nothing of the synthesized stack could be applied")
    command = dcforge("accept", "--env-file", str(env_file), "--only", "compliance",
                      "--reports", str(tmp_path / "reports"), kubeconfig=kubeconfig)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    (check,) = [c for c in report_of(tmp_path / "reports")["checks"] if c["name"] == "compliance"]
    findings = json.loads((report_dir_of(tmp_path / "reports") / check["artefacts"]["findings"]).read_text())
    unexcepted = [v for v in findings["violations"] if not v["excepted"]]
    assert done.returncode == 0 and check["metrics"]["violations"]["value"] == 0, (check["reason"], unexcepted,
                                                                                   deployed["not served"])
