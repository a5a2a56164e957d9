"""The CrossGuard pack as the Pulumi engine runs it: `python -m pulumi.policy <engine> stacks/policy`, then gRPC.

The pack process serves the Analyzer protocol; the test plays the engine: asks for the policy list, sends resources
(one at a time and as a whole stack, the prod stack's own resources from a mocked run) and reads the diagnostics.
"""

from __future__ import annotations

import sys
import time

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime import proto
from pulumi.runtime.proto import analyzer_pb2_grpc

from dcforge.compliance import RULES
from dcforge.harness.processes import ManagedProcess
from dcforge.paths import STACKS_DIR

sys.path.insert(0, str(STACKS_DIR))

from tests.pulumi_mocks import run_stack_program, stack_config  # noqa: E402
from dcforge.spec import load_environment  # noqa: E402

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 60
RPC_TIMEOUT_S = 60
WILDCARD_ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "too-much"},
                 "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
NARROW_ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "viewer"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}
ROLE_TYPE = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"


def struct(value: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(value, struct_pb2.Struct())


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    log = tmp_path_factory.mktemp("policy-pack") / "pack.log"
    pack = STACKS_DIR / "policy"
    # The engine address is only used for logging back to the engine, which this test does not serve.
    with ManagedProcess([sys.executable, "-m", "pulumi.policy", "127.0.0.1:1", str(pack)], cwd=pack,
                        log_path=log) as process:
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        while port is None:
            lines = log.read_text().splitlines() if log.exists() else []
            port = next((int(line) for line in lines if line.strip().isdigit()), None)
            if port is None:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"policy pack did not start:\n{log.read_text() if log.exists() else ''}")
                time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
        # Reap the pack here: the group kill on exit would otherwise wait its grace period for the zombie.
        process.popen.terminate()
        process.popen.wait(timeout=START_TIMEOUT_S)


def test_the_pack_lists_one_policy_per_rule(analyzer):
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=RPC_TIMEOUT_S)
    assert info.name == "dcforge-compliance"
    assert [policy.name for policy in info.policies] == [rule.id for rule in RULES]


def analyze(analyzer, manifest: dict, stack: str = "dev") -> set[str]:
    request = proto.AnalyzeRequest(type=ROLE_TYPE, properties=struct(manifest),
                                   urn=f"urn:pulumi:{stack}::dcforge::{ROLE_TYPE}::{manifest['metadata']['name']}",
                                   name=manifest["metadata"]["name"])
    response = analyzer.Analyze(request, timeout=RPC_TIMEOUT_S)
    return {diagnostic.policyName for diagnostic in response.diagnostics}


def test_a_wildcard_role_is_rejected_and_a_narrow_one_passes(analyzer):
    assert analyze(analyzer, WILDCARD_ROLE) == {"DCF-RBAC-001", "DCF-RBAC-003"}
    assert analyze(analyzer, NARROW_ROLE) == set()


def analyze_stack(analyzer, resources) -> list[tuple[str, str]]:
    request = proto.AnalyzeStackRequest(resources=[
        proto.AnalyzerResource(type=r.type, properties=struct(r.inputs), urn=r.urn, name=r.name)
        for r in resources])
    response = analyzer.AnalyzeStack(request, timeout=RPC_TIMEOUT_S)
    return [(d.policyName, d.urn) for d in response.diagnostics]


def test_the_prod_stack_passes_and_a_missing_default_deny_is_caught(analyzer):
    resources = [r for r in run_stack_program("prod", stack_config(load_environment("prod").raw_config))
                 if r.type.startswith("kubernetes:")]
    assert analyze_stack(analyzer, resources) == []
    for role in (r for r in resources if r.type == ROLE_TYPE):
        assert analyze(analyzer, role.inputs, "prod") == set(), role.name
    without = [r for r in resources
               if not (r.type.endswith(":NetworkPolicy") and r.name == "training/default-deny-all")]
    [(policy, urn)] = analyze_stack(analyzer, without)
    assert policy == "DCF-NET-001" and urn.endswith("Namespace::training")
