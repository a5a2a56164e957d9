"""`dcforge preview|up|destroy` with the real Pulumi engine, Kubernetes provider and policy pack, on a real API server.

One stack (`cluster`) goes through its life in order: created, updated again with no change, drift found and
repaired, a policy-breaking change refused, destroyed (twice); then a fresh `up` is interrupted with Ctrl-C and the
next `up` finishes it. Every cluster fact is read back with the Kubernetes client, not from the engine's word.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import pytest

from dcforge import deploy
from dcforge.errors import DcforgeError
from dcforge.paths import REPO_ROOT

from .conftest import ENV_NAME, stacks_copy

SA_PATCH = "kubernetes:core/v1:ServiceAccountPatch"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, engine, kubeconfig):
    """The stack's stacks folder and options: a fresh file backend, the cluster's kubeconfig."""
    folder = tmp_path_factory.mktemp("engine")
    options = deploy.DeployOptions(backend_url=f"file://{folder / 'state'}", kubeconfig=kubeconfig)
    return stacks_copy(folder / "stacks"), options


def run(operation: str, stack, **changes) -> deploy.DeployResult:
    stacks, options = stack
    from dataclasses import replace

    return deploy.run(operation, ENV_NAME, replace(options, **changes), stacks_dir=stacks, on_output=None)


def read(admin, path: str) -> int:
    """HTTP status of GET `path` on the API server (200 there, 404 gone)."""
    from kubernetes.client.exceptions import ApiException

    try:
        admin.call_api(path, "GET", auth_settings=["BearerToken"], _preload_content=False)
        return 200
    except ApiException as error:
        return error.status


NETWORK_POLICY = "/apis/networking.k8s.io/v1/namespaces/training/networkpolicies/default-deny"
STORAGE_CLASS = "/apis/storage.k8s.io/v1/storageclasses/local-path-checkpoints"
HELM_VALUES = "/api/v1/namespaces/cert-manager/configmaps/cert-manager-values"
NAMESPACE = "/api/v1/namespaces/team-e2e"


def test_up_creates_every_object_and_a_second_up_changes_nothing(stack, admin):
    first = run("up", stack)
    assert first.changes.get("create", 0) > 40 and first.changed == first.changes["create"]
    assert first.versions["pulumi"] and first.versions["pulumi-resource-kubernetes"]
    assert first.outputs["environment"] == ENV_NAME
    for path in (NETWORK_POLICY, STORAGE_CLASS, NAMESPACE, HELM_VALUES):  # HELM_VALUES: the chart was installed
        assert read(admin, path) == 200, path
    second = run("up", stack)
    assert second.changed == 0, second.changes
    assert second.changes["same"] == first.changes["create"] + first.changes.get("same", 0)


def test_preview_refresh_finds_a_deleted_object_and_up_restores_it(stack, admin):
    admin.call_api(NETWORK_POLICY, "DELETE", auth_settings=["BearerToken"], _preload_content=False)
    assert read(admin, NETWORK_POLICY) == 404
    assert run("preview", stack).changed == 0  # without refresh the engine trusts its state
    plan = run("preview", stack, refresh=True)
    assert plan.by_type["kubernetes:networking.k8s.io/v1:NetworkPolicy"].get("create") == 1, plan.by_type
    assert plan.changed == 1
    restored = run("up", stack, refresh=True)
    assert restored.changes.get("create") == 1 and read(admin, NETWORK_POLICY) == 200


def test_a_policy_breaking_change_is_refused_with_the_rules_message_and_nothing_changes(stack, admin):
    stacks, options = stack
    text = (stacks / f"Pulumi.{ENV_NAME}.yaml").read_text()
    broken = text.replace("replication: 1, default: true}", "replication: 1, default: true, encrypted: false}")
    assert broken != text
    (stacks / f"Pulumi.{ENV_NAME}.yaml").write_text(broken)
    try:
        for operation in ("preview", "up"):
            with pytest.raises(deploy.DeployFailed) as refused:
                run(operation, stack)
            message = str(refused.value)
            assert "\n" not in message and "policy DCF-STO-001" in message
            assert "StorageClass/local-path-checkpoints" in message
        assert run("preview", stack, policy_pack=False).changed == 1  # the change itself is real
    finally:
        (stacks / f"Pulumi.{ENV_NAME}.yaml").write_text(text)
    assert run("preview", stack).changed == 0  # the refused up changed nothing


def test_an_unreachable_cluster_is_one_line_and_exit_1(stack, tmp_path):
    dead = tmp_path / "kubeconfig"
    dead.write_text("apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster: {server: 'https://127.0.0.1:1'}\n"
                    "users:\n- name: x\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: x, user: x}\n"
                    "current-context: x\n")
    with pytest.raises(deploy.DeployFailed) as failed:
        run("preview", stack, kubeconfig=dead, refresh=True)
    assert failed.value.exit_code == 1 and "\n" not in str(failed.value)
    assert "127.0.0.1:1" in str(failed.value) or "connection refused" in str(failed.value).lower()


def test_destroy_removes_what_the_stack_created_and_nothing_else(stack, admin):
    from kubernetes import client

    core = client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_config_map("default", {"metadata": {"name": "made-by-others"}})
    rbac.create_cluster_role({"metadata": {"name": "made-by-others"}, "rules": []})
    try:
        gone = run("destroy", stack)
        assert gone.changes.get("delete", 0) > 40
        for path in (NETWORK_POLICY, STORAGE_CLASS, HELM_VALUES):
            assert read(admin, path) == 404, path
        assert read(admin, "/api/v1/namespaces/default/configmaps/made-by-others") == 200
        assert read(admin, "/apis/rbac.authorization.k8s.io/v1/clusterroles/made-by-others") == 200
        assert run("destroy", stack).changed == 0
    finally:
        core.delete_namespaced_config_map("made-by-others", "default")
        rbac.delete_cluster_role("made-by-others")


def test_ctrl_c_during_up_cancels_cleanly_and_the_next_up_finishes(stack, admin):
    stacks, options = stack
    # `dcforge up` as a user runs it, its environment file the test's copy (found through DCFORGE_STACKS_DIR)
    command = [sys.executable, "-u", "-m", "dcforge.cli", "up", "--env", ENV_NAME, "--no-accept",
               "--backend", options.backend_url, "--kubeconfig", str(options.kubeconfig)]
    env = {**os.environ, "DCFORGE_STACKS_DIR": str(stacks),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    lines = []
    deadline = time.monotonic() + 300
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "created" in line or time.monotonic() > deadline:
            break
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    rest, _ = process.communicate(timeout=300)
    output = "".join(lines) + rest
    assert process.returncode == 130, output[-3000:]
    assert "interrupted: the engine cancelled it" in output and f"dcforge up --env {ENV_NAME}" in output
    finished = run("up", stack)
    assert finished.changes.get("create", 0) >= 1
    assert read(admin, STORAGE_CLASS) == 200 and read(admin, NETWORK_POLICY) == 200
    assert run("up", stack).changed == 0
    assert run("destroy", stack).changes.get("delete", 0) > 40


def test_no_engine_is_one_line_with_how_to_build_it(stack, monkeypatch, tmp_path):
    monkeypatch.setenv("DCFORGE_PULUMI_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DcforgeError) as missing:
        run("preview", stack)
    assert missing.value.exit_code == 2 and "make pulumi-tools" in str(missing.value)

