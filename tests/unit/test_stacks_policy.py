"""The CrossGuard policy pack, called directly (`policy.validate(args, report)`): a `PolicyPack` would block."""

from __future__ import annotations

import sys

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import unknown_checking_proxy

from dcforge.paths import STACKS_DIR

sys.path.insert(0, str(STACKS_DIR))
sys.path.insert(0, str(STACKS_DIR / "policy"))

import dcforge_policy  # noqa: E402
from tests.pulumi_mocks import run_stack_program, stack_config  # noqa: E402
from dcforge.compliance import GPU_EXCEPTIONS, RULES  # noqa: E402
from dcforge.spec import load_environment  # noqa: E402

OPTIONS = PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[])
WILDCARD_ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "too-much"},
                 "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
NARROW_ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "viewer"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}


def privileged_deployment(namespace: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probe", "namespace": namespace},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "probe"}}, "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "probe", "image": "busybox:latest",
                                         "securityContext": {"privileged": True}}]}}}}


def urn(stack: str, resource_type: str, name: str) -> str:
    return f"urn:pulumi:{stack}::dcforge::dcforge:index:Test${resource_type}::{name}"


def resource_type_of(manifest: dict) -> str:
    group, _, version = manifest["apiVersion"].rpartition("/")
    return f"kubernetes:{group or 'core'}/{version}:{manifest['kind']}"


def judge(policies, manifest: dict, stack: str = "dev") -> dict[str, list[str]]:
    """Every resource policy run on one resource: rule id -> messages reported."""
    resource_type = resource_type_of(manifest)
    # The engine hands props over wrapped in read-only proxies (Mappings, not dicts): test through the same wrapper.
    args = ResourceValidationArgs(resource_type, unknown_checking_proxy(manifest),
                                  urn(stack, resource_type, manifest["metadata"]["name"]),
                                  manifest["metadata"]["name"], OPTIONS, None)
    reported: dict[str, list[str]] = {}
    for policy in policies:
        if isinstance(policy, ResourceValidationPolicy):
            policy.validate(args, lambda message, _urn=None, rule=policy.name: reported.setdefault(rule, []).append(
                message))
    return reported


def judge_stack(policies, resources: list[tuple[str, dict, str]]) -> dict[str, list[tuple[str, str | None]]]:
    """Every stack policy run on (type, props, urn) resources: rule id -> (message, urn) reported."""
    stack = StackValidationArgs([PolicyResource(t, unknown_checking_proxy(props), u, u.rsplit("::", 1)[1], OPTIONS,
                                                None, None, [], {})
                                 for t, props, u in resources])
    reported: dict[str, list[tuple[str, str | None]]] = {}
    for policy in policies:
        if isinstance(policy, StackValidationPolicy):
            policy.validate(stack, lambda message, at=None, rule=policy.name: reported.setdefault(rule, []).append(
                (message, at)))
    return reported


@pytest.fixture(scope="module")
def policies():
    return dcforge_policy.build_policies()


def test_one_policy_per_rule_with_its_severity_and_scope(policies):
    assert [p.name for p in policies] == [rule.id for rule in RULES]
    for policy, rule in zip(policies, RULES):
        expected = ResourceValidationPolicy if rule.scope == "resource" else StackValidationPolicy
        assert isinstance(policy, expected)
        assert policy.severity == Severity(rule.severity)
        assert policy.enforcement_level == (EnforcementLevel.ADVISORY if rule.severity == "low"
                                            else EnforcementLevel.MANDATORY)
        assert rule.source in policy.description


def test_a_compliant_role_passes_and_a_wildcard_role_is_reported(policies):
    assert judge(policies, NARROW_ROLE) == {}
    reported = judge(policies, WILDCARD_ROLE)
    assert set(reported) == {"DCF-RBAC-001", "DCF-RBAC-003"}
    assert all(message.startswith("ClusterRole/too-much: ") for message in reported["DCF-RBAC-001"])


def test_a_privileged_pod_is_reported_except_in_the_gpu_operator_namespace(policies):
    assert "DCF-POD-001" in judge(policies, privileged_deployment("training"))
    assert "DCF-POD-001" not in judge(policies, privileged_deployment("gpu-operator"))


def test_exceptions_follow_the_stack_spec():
    # IPC_LOCK is waived only in namespaces the spec attaches RDMA to: none in dev, training in prod.
    rdma_pod = privileged_deployment("training")
    container = rdma_pod["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    policies = [p for p in dcforge_policy.build_policies() if p.name == "DCF-POD-008"]
    assert "DCF-POD-008" in judge(policies, rdma_pod, stack="dev")
    assert "DCF-POD-008" not in judge(policies, rdma_pod, stack="prod")
    assert dcforge_policy.stack_of(urn("prod", "kubernetes:core/v1:Namespace", "x")) == "prod"
    assert dcforge_policy.environment_exceptions("no-such-env") == tuple(GPU_EXCEPTIONS)
    fixed = dcforge_policy.build_policies(exceptions=())
    assert "DCF-POD-001" in judge(fixed, privileged_deployment("gpu-operator"))


def test_helm_releases_are_judged_as_the_pseudo_manifest_synth_writes():
    props = {"name": "gpu-operator", "namespace": "gpu-operator", "chart": "gpu-operator", "version": "v25.3.2",
             "repositoryOpts": {"repo": "https://helm.ngc.nvidia.com/nvidia"}, "values": {"driver": {}}}
    manifest = dcforge_policy.manifest_from_props("kubernetes:helm.sh/v3:Release", props)
    assert manifest["kind"] == "HelmRelease" and manifest["spec"]["repository"].startswith("https://helm.ngc")
    assert dcforge_policy.manifest_from_props("dcforge:index:GpuOperator", {}) is None


@pytest.fixture(scope="module")
def prod_resources():
    loaded = load_environment("prod")
    registered = run_stack_program("prod", stack_config(loaded.raw_config))
    return [(r.type, r.inputs, r.urn) for r in registered]


def test_the_prod_stack_passes_every_policy(policies, prod_resources):
    for resource_type, props, resource_urn in prod_resources:
        manifest_name = props.get("metadata", {}).get("name", props.get("name", ""))
        args = ResourceValidationArgs(resource_type, unknown_checking_proxy(props), resource_urn, manifest_name,
                                      OPTIONS, None)
        for policy in policies:
            if isinstance(policy, ResourceValidationPolicy):
                policy.validate(args, lambda message, _urn=None: pytest.fail(f"{policy.name}: {message}"))
    assert judge_stack(policies, prod_resources) == {}


def test_a_namespace_without_default_deny_is_reported_against_that_namespace(policies, prod_resources):
    without = [(t, props, u) for t, props, u in prod_resources
               if not (t.endswith(":NetworkPolicy") and u.endswith("::training/default-deny-all"))]
    reported = judge_stack(policies, without)
    assert list(reported) == ["DCF-NET-001"]
    [(message, at)] = reported["DCF-NET-001"]
    assert "training" in message
    assert at is not None and at.endswith("Namespace::training")
