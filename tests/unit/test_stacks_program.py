"""`stacks/__main__.py` under Pulumi mocks for the real environments: per-component assertions and golden graphs.

Golden graphs live in tests/unit/golden/stacks_graph_<env>.json (one resource per line). After an intended change,
regenerate them with `DCFORGE_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_stacks_program.py` and review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path

import pulumi
import pytest

from dcforge.paths import STACKS_DIR

sys.path.insert(0, str(STACKS_DIR))

from tests.pulumi_mocks import Registered, graph_snapshot, run_stack_program, stack_config  # noqa: E402
from dcforge.spec import load_environment  # noqa: E402

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("DCFORGE_UPDATE_GOLDEN") == "1"
ROLE_KINDS = ("Role", "ClusterRole")


class Graph:
    """The resources one mocked program run registered, with lookups for assertions."""

    def __init__(self, env_name: str):
        self.loaded = load_environment(env_name)
        self.spec = self.loaded.spec
        self.resources: list[Registered] = run_stack_program(env_name, stack_config(self.loaded.raw_config))
        self.by_urn = {r.urn: r for r in self.resources}

    def of_kind(self, kind: str) -> list[Registered]:
        return [r for r in self.resources if r.type.rsplit(":", 1)[-1] == kind]

    def one(self, kind: str, name: str) -> Registered:
        matches = [r for r in self.of_kind(kind) if r.name == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def component_of(self, resource: Registered) -> str:
        parent = self.by_urn[resource.parent]
        return f"{parent.type.rsplit(':', 1)[-1]}/{parent.name}"


@pytest.fixture(scope="module")
def dev() -> Graph:
    return Graph("dev")


@pytest.fixture(scope="module")
def prod() -> Graph:
    return Graph("prod")


@pytest.fixture(scope="module")
def local() -> Graph:
    return Graph("local")


def test_every_kubernetes_resource_belongs_to_a_typed_component(dev, prod):
    for graph in (dev, prod):
        tokens = {r.type for r in graph.resources if r.type.startswith("dcforge:")}
        assert tokens == {f"dcforge:index:{c}" for c in ("GpuNodePool", "GpuOperator", "DistributedStorage",
                                                         "ClusterNetwork", "SecurityBaseline", "Acceptance")}
        for resource in graph.resources:
            if resource.type.startswith("kubernetes:"):
                assert graph.by_urn[resource.parent].type.startswith("dcforge:index:"), resource.name
    assert len(dev.of_kind("GpuNodePool")) == len(dev.spec.gpu_pools)


def test_gpu_node_pool_patches_named_nodes_with_the_pool_labels_and_taints(dev):
    pool = dev.spec.pool("train-h100")
    for node in pool.nodes:
        patch = dev.one("NodePatch", node)
        assert dev.component_of(patch) == "GpuNodePool/train-h100"
        labels = patch.inputs["metadata"]["labels"]
        assert labels["dcforge.io/fabric"] == "nvlink" and labels["dcforge.io/pool"] == "train-h100"
        # the pool's own taint, and the validation gate (gateNewNodes: true) until acceptance releases the node
        assert patch.inputs["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                                                  {"key": "dcforge.io/validation", "value": "pending",
                                                   "effect": "NoSchedule"}]
    # A pool given by node count (cloud node group) has no named nodes to patch.
    assert not [r for r in dev.of_kind("NodePatch") if dev.component_of(r) == "GpuNodePool/infer-l4"]


def gpu_quota(cluster_queue: Registered) -> dict[str, float]:
    [group] = cluster_queue.inputs["spec"]["resourceGroups"]
    [flavor] = group["flavors"]
    return {item["name"]: item["nominalQuota"] for item in flavor["resources"]}


def test_gpu_node_pool_kueue_quota_and_local_queues(dev):
    # 2 nodes x 8 H100; 1 node x 4 L4 time-sliced 4 ways = 16 schedulable GPU units each.
    assert gpu_quota(dev.one("ClusterQueue", "train-h100")) == {"cpu": 224.0, "memory": "4096Gi",
                                                               "nvidia.com/gpu": 16.0}
    assert gpu_quota(dev.one("ClusterQueue", "infer-l4"))["nvidia.com/gpu"] == 16.0
    local_queue = dev.one("LocalQueue", "team-ml/train-h100")
    assert local_queue.inputs["spec"] == {"clusterQueue": "train-h100"}
    assert dev.component_of(local_queue) == "GpuNodePool/train-h100"
    assert any(d.endswith("Namespace::team-ml") for d in local_queue.dependencies)
    assert any(d.endswith("Release::kueue-system/kueue") for d in local_queue.dependencies)
    assert {r.name for r in dev.of_kind("PriorityClass")}


def test_gpu_operator_release_is_pinned_and_leaves_the_driver_to_ansible(dev):
    release = dev.one("Release", "gpu-operator/gpu-operator")
    assert dev.component_of(release) == "GpuOperator/platform"
    assert release.inputs["version"] == dev.spec.versions.gpu_operator
    assert release.inputs["repositoryOpts"]["repo"].startswith("https://")
    values = release.inputs["values"]
    assert values["driver"]["enabled"] is False
    assert values["dcgmExporter"]["enabled"] is True and values["devicePlugin"]["enabled"] is True
    assert values["mig"]["strategy"] in ("single", "mixed")
    config = dev.one("ConfigMap", "gpu-operator/dcforge-device-plugin-config")
    assert "replicas: 4" in config.inputs["data"]["infer-l4"]  # time-slicing of the L4 pool


def test_distributed_storage_is_encrypted_replicated_ceph_in_prod(prod):
    cluster = prod.one("CephCluster", "rook-ceph/rook-ceph")
    assert prod.component_of(cluster) == "DistributedStorage/platform"
    spec = cluster.inputs["spec"]
    assert spec["mon"]["count"] == 5.0
    assert spec["storage"]["deviceFilter"] == "^nvme[2-9]n1$"
    assert spec["storage"]["config"]["encryptedDevice"] == "true"
    assert spec["network"]["connections"]["encryption"]["enabled"] is True
    assert spec["network"]["connections"]["requireMsgr2"] is True
    assert any(d.endswith("Release::rook-ceph/rook-ceph") for d in cluster.dependencies)
    pool = prod.one("CephBlockPool", "rook-ceph/checkpoints")
    assert pool.inputs["spec"]["replicated"]["size"] == 3.0 and pool.inputs["spec"]["failureDomain"] == "host"
    assert prod.one("CephFilesystem", "rook-ceph/datasets")
    classes = {r.name: r.inputs for r in prod.of_kind("StorageClass")}
    assert classes["checkpoints"]["provisioner"].endswith("rbd.csi.ceph.com")
    assert classes["datasets"]["provisioner"].endswith("cephfs.csi.ceph.com")
    assert classes["checkpoints"]["parameters"]["encrypted"] == "true"


def test_small_environments_use_local_path_storage(dev):
    [storage_class] = dev.of_kind("StorageClass")
    assert "local-path" in storage_class.inputs["provisioner"]
    assert not dev.of_kind("CephCluster")


def test_cluster_network_namespaces_have_psa_labels_and_default_deny(dev, prod):
    for graph in (dev, prod):
        policies = {(r.inputs["metadata"]["namespace"], r.inputs["metadata"]["name"]): r.inputs["spec"]
                    for r in graph.of_kind("NetworkPolicy")}
        for namespace in graph.of_kind("Namespace"):
            labels = namespace.inputs["metadata"]["labels"]
            assert labels["pod-security.kubernetes.io/enforce"] in ("restricted", "baseline", "privileged")
            deny = policies[(namespace.name, "default-deny-all")]
            assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, namespace.name
        assert graph.one("Namespace", "training").inputs["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"] == "restricted"


def test_rdma_secondary_networks_only_when_the_spec_asks(dev, prod):
    assert not dev.of_kind("NetworkAttachmentDefinition")
    networks = prod.of_kind("NetworkAttachmentDefinition")
    assert len({r.name.split("/")[1] for r in networks}) == len(prod.spec.network.rdma.interfaces)
    assert all(prod.component_of(r) == "ClusterNetwork/platform" for r in networks)
    assert prod.of_kind("NicClusterPolicy")


def test_security_baseline_rbac_has_no_wildcards_and_service_accounts_no_token(dev, prod):
    for graph in (dev, prod):
        for kind in ROLE_KINDS:
            for role in graph.of_kind(kind):
                for rule in role.inputs.get("rules", []):
                    for field in ("verbs", "resources", "apiGroups"):
                        assert "*" not in rule.get(field, []), f"{kind} {role.name} {field}"
        for account in graph.of_kind("ServiceAccount"):
            assert account.inputs["automountServiceAccountToken"] is False, account.name
        assert {r.name for r in graph.of_kind("ClusterRole")} >= {"platform-admin", "ml-engineer", "ml-viewer"}


def test_security_baseline_quotas_certificates_and_cert_manager(prod):
    for team in prod.spec.security.teams:
        quotas = [r for r in prod.of_kind("ResourceQuota") if r.inputs["metadata"]["namespace"] == team.namespace]
        assert len(quotas) == 1
        assert prod.component_of(quotas[0]) == "SecurityBaseline/platform"
        assert [r for r in prod.of_kind("LimitRange") if r.inputs["metadata"]["namespace"] == team.namespace]
        bindings = [r for r in prod.of_kind("RoleBinding") if r.inputs["metadata"]["namespace"] == team.namespace]
        assert {b.inputs["roleRef"]["name"] for b in bindings} == {"ml-engineer", "ml-viewer"}
    release = prod.one("Release", "cert-manager/cert-manager")
    assert release.inputs["version"] == prod.spec.security.cert_manager_chart_version
    hosts = [name for r in prod.of_kind("Certificate") for name in r.inputs["spec"].get("dnsNames", [])]
    assert "llm.prod.example.internal" in hosts
    assert prod.of_kind("ClusterIssuer")


def test_acceptance_gets_a_least_privilege_role(dev):
    role = dev.one("Role", "acceptance/dcforge-acceptance")
    assert dev.component_of(role) == "Acceptance/acceptance"
    for rule in role.inputs["rules"]:
        if "secrets" in rule.get("resources", []):  # a run's API key: written and deleted, never read back
            assert set(rule["verbs"]) <= {"create", "delete"}
        assert not {"escalate", "bind", "impersonate", "*"} & set(rule["verbs"])
    assert dev.one("ServiceAccount", "acceptance/dcforge-acceptance")


def test_no_gpu_stack_without_gpu_pools(local):
    assert not local.of_kind("GpuOperator") and not local.of_kind("GpuNodePool")
    assert local.of_kind("Acceptance")


def render(snapshot: list[dict]) -> str:
    """One resource per line: diffs name exactly the resources that changed."""
    return "[\n" + ",\n".join(json.dumps(node, sort_keys=True) for node in snapshot) + "\n]\n"


@pytest.mark.parametrize("env_name", ["local", "dev", "prod"])
def test_golden_resource_graph(env_name, request):
    graph = request.getfixturevalue(env_name)
    actual = render(graph_snapshot(graph.resources))
    golden = GOLDEN_DIR / f"stacks_graph_{env_name}.json"
    if UPDATE_GOLDEN or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual)
        if not UPDATE_GOLDEN:
            pytest.fail(f"{golden} did not exist: written now, review and commit it")
        return
    expected = golden.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"{golden.name} (golden)", f"{golden.name} (now)", n=0))
        pytest.fail(f"the mocked resource graph of {env_name!r} changed; if intended, regenerate with "
                    f"DCFORGE_UPDATE_GOLDEN=1:\n{diff}")


def bad_config(env_name: str, edit) -> dict:
    raw = json.loads(json.dumps(load_environment(env_name).raw_config))
    edit(raw)
    return stack_config(raw)


BAD_SPECS = {
    "overlapping CIDRs": (lambda c: c["network"].update(serviceCidr="10.244.128.0/17"),
                          "dcforge:network.serviceCidr", "overlaps podCidr"),
    "pool quota above capacity": (lambda c: c["gpuPools"][0].update(quota={"gpus": 17}),
                                  "dcforge:gpuPools[0].quota.gpus", "quota.gpus 17 exceeds the pool's capacity 16"),
    "duplicate namespaces": (lambda c: c["network"]["namespaces"].append({"name": "training"}),
                             "dcforge:network.namespaces", "duplicate name 'training'"),
    "taint syntax": (lambda c: c["gpuPools"][0].update(taints=["nvidia.com/gpu=present:NoShedule"]),
                     "dcforge:gpuPools[0].taints", "is not 'key=value:Effect'"),
    "unknown storage backend": (lambda c: c["storage"].update(backend="ceph"),
                                "dcforge:storage.backend", "rook-ceph"),
    "unknown key": (lambda c: c.update(gpuPool=[]), "dcforge:gpuPool", "unknown key"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_stops_the_program_before_any_resource(case):
    edit, key, message = BAD_SPECS[case]
    with pytest.raises(pulumi.RunError) as raised:
        registered = run_stack_program("dev", bad_config("dev", edit))
        pytest.fail(f"no error; {len(registered)} resources registered")
    text = str(raised.value)
    assert f"Pulumi.dev.yaml: {key}" in text and message in text, text
    assert "Traceback" not in text


def test_a_stack_without_dcforge_config_is_refused():
    with pytest.raises(pulumi.RunError, match="no 'dcforge:' keys in the config of stack 'dev'"):
        run_stack_program("dev", {})


def test_preview_declares_the_same_graph_as_an_update(dev):
    preview = run_stack_program("dev", stack_config(dev.loaded.raw_config), preview=True)
    assert graph_snapshot(preview) == graph_snapshot(dev.resources)


def test_a_chart_found_in_the_local_charts_folder_is_installed_from_it(tmp_path):
    """Stack config `charts:localDir` (air-gapped clusters, the engine tests): a release whose chart is there installs
    from that folder, with no repository; the others keep their repositories."""
    (tmp_path / "cert-manager").mkdir()
    (tmp_path / "cert-manager" / "Chart.yaml").write_text("apiVersion: v2\nname: cert-manager\nversion: 1.16.2\n")
    loaded = load_environment("dev")
    config = {**stack_config(loaded.raw_config), "charts:localDir": str(tmp_path)}
    releases = {r.name: r.inputs for r in run_stack_program("dev", config) if r.type.endswith(":Release")}
    assert releases["cert-manager/cert-manager"]["chart"] == str(tmp_path / "cert-manager")
    assert "repositoryOpts" not in releases["cert-manager/cert-manager"]
    assert releases["gpu-operator/gpu-operator"]["repositoryOpts"]["repo"].startswith("https://")
