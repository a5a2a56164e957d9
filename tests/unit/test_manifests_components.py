"""The pure manifest builders: labels, taints, quotas, encryption flags, policies per component."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter

import pytest
import yaml

from dcforge.compliance import evaluate, exceptions_for, resource_id, unexcepted
from dcforge.executors.kubernetes_access import EXECUTOR_API_ACCESS, NODE_LIST_ACCESS, rbac_rules
from dcforge.manifests import ComponentManifests, HelmRelease
from dcforge.manifests.build import (
    acceptance,
    build_all,
    cluster_network,
    distributed_storage,
    gpu_node_pool,
    gpu_operator,
    security_baseline,
)
from dcforge.spec import load_environment
from dcforge.spec.models import Environment
from dcforge.synth import synthesize

ENVIRONMENTS = ("local", "dev", "prod")


def spec_of(name: str) -> Environment:
    return load_environment(name).spec


def changed(spec: Environment, **sections) -> Environment:
    """The spec with some sections replaced (validated again, like a file would be)."""
    data = spec.model_dump(by_alias=True)
    data.update(sections)
    return Environment.model_validate(data)


def objects(component: ComponentManifests, kind: str) -> list[dict]:
    return [m for m in component.manifests if m["kind"] == kind]


def named(component: ComponentManifests, kind: str, name: str, namespace: str | None = None) -> dict:
    return next(m for m in objects(component, kind)
                if m["metadata"]["name"] == name and m["metadata"].get("namespace") == namespace)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_object_is_unique_well_formed_and_yaml_safe(env):
    spec = spec_of(env)
    components = build_all(spec)
    assert [c.component for c in components][:2] == ["ClusterNetwork", "SecurityBaseline"]
    assert components[-1].component == "Acceptance"
    everything = [obj for c in components for obj in c.all_objects()]
    for obj in everything:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
    duplicates = [key for key, n in Counter(resource_id(o) for o in everything).items() if n > 1]
    assert duplicates == []  # two components declaring one object would collide in Pulumi
    assert yaml.safe_load_all(yaml.safe_dump_all(everything))  # plain data only
    # every namespace an object lands in is created by some component (or is `default`, which every cluster has:
    # the node-marker's Role for Events about nodes lives there)
    created = {o["metadata"]["name"] for o in everything if o["kind"] == "Namespace"}
    used = {o["metadata"].get("namespace") for o in everything} - {None, "default"}
    assert used <= created, used - created


def test_builders_are_pure():
    spec = spec_of("prod")
    assert build_all(spec) == build_all(spec)


def test_node_pool_with_named_nodes_patches_labels_and_taints():
    spec = spec_of("dev")
    pool = gpu_node_pool(spec, spec.pool("train-h100"))
    assert pool.component == "GpuNodePool" and pool.name == "train-h100" and pool.releases == []
    nodes = objects(pool, "Node")
    assert [n["metadata"]["name"] for n in nodes] == ["dev-gpu-01", "dev-gpu-02"]
    for node in nodes:
        assert node["metadata"]["labels"] == {"dcforge.io/pool": "train-h100", "dcforge.io/purpose": "training",
                                              "dcforge.io/fabric": "nvlink"}
        # the pool's taint, then the validation gate of `gateNewNodes: true` (never in the flavor below)
        assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                                          {"key": "dcforge.io/validation", "value": "pending", "effect": "NoSchedule"}]
    flavor = named(pool, "ResourceFlavor", "train-h100")["spec"]
    assert flavor["nodeLabels"] == {"dcforge.io/pool": "train-h100"}
    assert flavor["tolerations"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule",
                                      "operator": "Equal"}]
    queue = named(pool, "ClusterQueue", "train-h100")["spec"]
    quota = {r["name"]: r["nominalQuota"] for r in queue["resourceGroups"][0]["flavors"][0]["resources"]}
    assert quota == {"cpu": 224, "memory": "4096Gi", "nvidia.com/gpu": 16}  # 2 nodes x (112 CPUs, 2 TiB, 8 GPUs)
    admitted = queue["namespaceSelector"]["matchExpressions"][0]["values"]
    assert set(admitted) == {"team-ml", "training", "acceptance"}  # quota holder, purpose, acceptance pool
    assert {(q["metadata"]["namespace"], q["spec"]["clusterQueue"]) for q in objects(pool, "LocalQueue")} == \
        {(ns, "train-h100") for ns in admitted}


def test_time_sliced_pool_multiplies_gpus_and_selects_its_device_plugin_config():
    spec = spec_of("dev")
    infer = spec.pool("infer-l4")
    pool = gpu_node_pool(spec, infer)
    assert objects(pool, "Node") == []  # a node group: labels come with the ResourceFlavor
    queue = named(pool, "ClusterQueue", "infer-l4")["spec"]
    quota = {r["name"]: r["nominalQuota"] for r in queue["resourceGroups"][0]["flavors"][0]["resources"]}
    assert quota["nvidia.com/gpu"] == 4 * 4  # 1 node x 4 L4 x 4 time-slicing replicas
    config = named(gpu_operator(spec), "ConfigMap", "dcforge-device-plugin-config", "gpu-operator")["data"]
    sharing = yaml.safe_load(config["infer-l4"])["sharing"]["timeSlicing"]["resources"]
    assert sharing == [{"name": "nvidia.com/gpu", "replicas": 4}]
    assert "train-h100" not in config  # unshared pools use the default key


def test_explicit_pool_quota_and_mig():
    spec = spec_of("prod")
    pools = spec.model_dump(by_alias=True)["gpuPools"]
    pools[0]["quota"] = {"gpus": 100, "cpu": 1000, "memoryGi": 2000}
    pools[1]["sharing"] = {"mode": "mig", "migStrategy": "single", "migProfile": "1g.10gb"}
    spec = changed(spec, gpuPools=pools)
    quota_pool = gpu_node_pool(spec, spec.pool("train-a"))
    resources = named(quota_pool, "ClusterQueue", "train-a")["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    assert {r["name"]: r["nominalQuota"] for r in resources} == {"cpu": 1000, "memory": "2000Gi",
                                                                  "nvidia.com/gpu": 100}
    mig = spec.pool("train-b")
    mig_pool = gpu_node_pool(spec, mig)
    resources = named(mig_pool, "ClusterQueue", "train-b")["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    assert {r["name"]: r["nominalQuota"] for r in resources}["nvidia.com/gpu"] == 64 * 8 * 7
    assert named(mig_pool, "ResourceFlavor", "train-b")["spec"]["nodeLabels"] == {"dcforge.io/pool": "train-b"}
    values = gpu_operator(spec).releases[0].values
    assert values["migManager"]["enabled"] is True and values["mig"]["strategy"] == "single"


def test_gpu_operator_release_is_pinned_with_driver_managed_by_ansible():
    spec = spec_of("prod")
    operator = gpu_operator(spec)
    release = operator.releases[0]
    assert (release.chart, release.version, release.namespace) == ("gpu-operator", spec.versions.gpu_operator,
                                                                    "gpu-operator")
    assert release.values["driver"]["enabled"] is False and release.values["toolkit"]["enabled"] is False
    assert release.values["dcgmExporter"]["enabled"] is True and release.values["migManager"]["enabled"] is False
    assert [r.chart for r in operator.releases] == ["gpu-operator", "kueue"]
    assert {p["metadata"]["name"]: p["value"] for p in objects(operator, "PriorityClass")}[
        "dcforge-inference-critical"] > 10000
    manifest = release.to_manifest()
    assert manifest["kind"] == "HelmRelease" and manifest["spec"]["values"] == release.values
    assert all(m["kind"] == "Namespace" for m in operator.all_objects()[:2])  # namespaces before releases
    assert operator.all_objects()[2]["kind"] == "HelmRelease"
    assert not any(c.component == "GpuOperator" for c in build_all(spec_of("local")))  # no pools, no GPU stack


def test_rook_ceph_is_encrypted_replicated_and_host_failure_domain():
    spec = spec_of("prod")
    storage = distributed_storage(spec)
    assert [(r.chart, r.version) for r in storage.releases] == [("rook-ceph", spec.storage.ceph.operator_chart_version)]
    cluster = named(storage, "CephCluster", "rook-ceph", "rook-ceph")["spec"]
    assert cluster["mon"]["count"] == 5
    assert cluster["network"]["connections"]["encryption"]["enabled"] is True
    assert cluster["network"]["connections"]["requireMsgr2"] is True
    assert cluster["storage"]["config"]["encryptedDevice"] == "true"
    assert cluster["storage"]["deviceFilter"] == "^nvme[2-9]n1$"
    assert [n["name"] for n in cluster["storage"]["nodes"]] == [f"stor-0{i}" for i in range(1, 7)]
    pool = named(storage, "CephBlockPool", "checkpoints", "rook-ceph")["spec"]
    assert pool == {"failureDomain": "host", "replicated": {"size": 3, "requireSafeReplicaSize": True}}
    fs = named(storage, "CephFilesystem", "datasets", "rook-ceph")["spec"]
    assert fs["dataPools"][0]["replicated"]["size"] == 3
    classes = {c["metadata"]["name"]: c for c in objects(storage, "StorageClass")}
    assert classes["checkpoints"]["provisioner"] == "rook-ceph.rbd.csi.ceph.com"
    assert classes["checkpoints"]["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert classes["datasets"]["provisioner"] == "rook-ceph.cephfs.csi.ceph.com"
    assert classes["datasets"]["parameters"]["pool"] == "datasets-data0"
    assert classes["checkpoints"]["parameters"]["encrypted"] == "true"
    assert classes["datasets"]["metadata"]["annotations"]["dcforge.io/encryption-at-rest"] == "ceph-osd-dmcrypt"


def test_small_backends_and_an_unencrypted_class_is_flagged():
    local = distributed_storage(spec_of("local"))
    assert local.releases == []
    (cls,) = objects(local, "StorageClass")
    assert cls["provisioner"] == "rancher.io/local-path" and cls["volumeBindingMode"] == "WaitForFirstConsumer"
    assert cls["metadata"]["annotations"]["dcforge.io/encryption-at-rest"] == "host-luks"
    # local-path takes no parameters, so there are none: `parameters: {}` is stored as absent by the API server and
    # a second server-side apply of it is refused (parameters are immutable), a perma-diff under Pulumi.
    assert "parameters" not in cls
    nfs_spec = changed(spec_of("local"), storage={
        "backend": "nfs", "nfs": {"server": "10.0.0.5", "path": "/exports/data"},
        "classes": [{"name": "shared", "kind": "filesystem", "replication": 1, "encrypted": False}]})
    nfs = distributed_storage(nfs_spec)
    assert [r.chart for r in nfs.releases] == ["csi-driver-nfs"]
    (cls,) = objects(nfs, "StorageClass")
    assert cls["parameters"] == {"server": "10.0.0.5", "share": "/exports/data"}
    verdicts = unexcepted(evaluate(nfs.all_objects(), exceptions_for(nfs_spec)))
    assert [(v.rule_id, v.resource) for v in verdicts if v.rule_id == "DCF-STO-001"] == \
        [("DCF-STO-001", "StorageClass/shared")]


def test_every_namespace_gets_psa_labels_and_default_deny():
    spec = spec_of("prod")
    network = cluster_network(spec)
    names = [n["metadata"]["name"] for n in objects(network, "Namespace")]
    assert names == ["training", "inference", "inference-gateway", "team-research", "team-applied",
                     "nvidia-network-operator"]  # acceptance comes with the Acceptance component
    for ns in objects(network, "Namespace"):
        labels = ns["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce-version"] == "v1.31"
        assert labels["pod-security.kubernetes.io/warn"] == "restricted"
        deny = named(network, "NetworkPolicy", "default-deny-all", ns["metadata"]["name"])["spec"]
        assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        assert named(network, "NetworkPolicy", "allow-dns", ns["metadata"]["name"])
    assert objects(network, "Namespace")[3]["metadata"]["labels"]["dcforge.io/team"] == "research"
    inference_ingress = named(network, "NetworkPolicy", "allow-from-gateway", "inference")["spec"]["ingress"][0]
    sources = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for peer in inference_ingress["from"]]
    assert sources == ["inference-gateway", "acceptance"] and inference_ingress["ports"] == [{"protocol": "TCP",
                                                                                              "port": 8000}]
    assert named(network, "NetworkPolicy", "allow-same-namespace", "training")  # NCCL between ranks


def test_rdma_rails_get_one_attachment_each_with_disjoint_subnets():
    spec = spec_of("prod")
    network = cluster_network(spec)
    attachments = objects(network, "NetworkAttachmentDefinition")
    by_namespace = Counter(a["metadata"]["namespace"] for a in attachments)
    assert by_namespace == {"training": 8, "team-research": 8, "team-applied": 8}
    configs = [json.loads(a["spec"]["config"]) for a in attachments if a["metadata"]["namespace"] == "training"]
    assert [c["master"] for c in configs] == list(spec.network.rdma.interfaces)
    subnets = [ipaddress.ip_network(c["ipam"]["range"]) for c in configs]
    rdma = ipaddress.ip_network(spec.network.rdma.cidr)
    assert all(s.subnet_of(rdma) for s in subnets)
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])
    assert attachments[0]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] == \
        "rdma/rdma_shared_device_a"
    assert len(objects(network, "NicClusterPolicy")) == 1
    assert [r.chart for r in network.releases] == ["network-operator"]
    assert objects(cluster_network(spec_of("dev")), "NetworkAttachmentDefinition") == []


def test_security_baseline_rbac_quota_and_certificates():
    spec = spec_of("prod")
    security = security_baseline(spec)
    assert [(r.chart, r.version) for r in security.releases] == [("cert-manager",
                                                                   spec.security.cert_manager_chart_version)]
    roles = {r["metadata"]["name"]: r for r in objects(security, "ClusterRole")}
    assert set(roles) == {"platform-admin", "ml-engineer", "ml-viewer"}
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    viewer_verbs = {verb for rule in roles["ml-viewer"]["rules"] for verb in rule["verbs"]}
    assert viewer_verbs == {"get", "list", "watch"}
    binding = named(security, "RoleBinding", "research-ml-engineer", "team-research")
    assert binding["roleRef"]["name"] == "ml-engineer" and binding["subjects"][0]["name"] == "research-engineers"
    quota = named(security, "ResourceQuota", "research-quota", "team-research")["spec"]["hard"]
    assert quota["requests.nvidia.com/gpu"] == "768" and quota["limits.memory"] == "131072Gi"
    assert named(security, "LimitRange", "research-limits", "team-research")
    for account in objects(security, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    (cert,) = [c for c in objects(security, "Certificate") if c["metadata"]["namespace"] == "inference-gateway"]
    assert cert["spec"]["dnsNames"] == ["llm.prod.example.internal"]
    assert cert["spec"]["issuerRef"]["name"] == "dcforge-ca"
    issuers = [i["metadata"]["name"] for i in objects(security, "ClusterIssuer")]
    assert issuers == ["dcforge-selfsigned", "dcforge-ca"]
    acme = changed(spec, security={**spec.security.model_dump(by_alias=True), "tlsIssuer": {
        "kind": "acme", "acmeServer": "https://acme.example/dir", "acmeEmail": "ops@example.com"}})
    (issuer,) = objects(security_baseline(acme), "ClusterIssuer")
    assert issuer["spec"]["acme"]["server"] == "https://acme.example/dir"


def test_acceptance_access_is_least_privilege():
    spec = spec_of("prod")
    access = acceptance(spec)
    assert [n["metadata"]["name"] for n in objects(access, "Namespace")] == ["acceptance"]
    (role,) = objects(access, "Role")
    # Exactly what the kubernetes executor uses (the executor tests prove it needs no more), nothing cluster-wide,
    # no reading Secrets (a run's API key Secret is created and deleted, never read back), no wildcards, nothing
    # that grants more access.
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {(a.group, resource, verb) for a in EXECUTOR_API_ACCESS for resource in a.resources
                       for verb in a.verbs}
    assert not {resource for _, resource, _ in granted} & {"*", "roles", "rolebindings"}
    assert {verb for _, resource, verb in granted if resource == "secrets"} == {"create", "delete"}
    assert {verb for _, _, verb in granted} <= {"get", "list", "watch", "create", "delete"}
    reader, lister = objects(access, "ClusterRole")
    assert not any("secrets" in rule["resources"] for rule in reader["rules"])
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in reader["rules"])
    assert lister["rules"] == rbac_rules(NODE_LIST_ACCESS)  # pinning pairs to named nodes: list nodes, nothing else
    default, account = objects(access, "ServiceAccount")
    assert default["metadata"]["name"] == "default" and default["automountServiceAccountToken"] is False
    bound = objects(access, "ClusterRoleBinding")[0]["subjects"][0]
    assert bound == {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "acceptance"}


def test_every_namespace_has_its_default_service_account_without_a_token():
    """Kubernetes' own `default` account would mount an API token into every pod that names no account (DCF-SA-001
    on a live cluster); the stack declares it, for every namespace it creates, with automount off."""
    for env in ("local", "dev", "prod"):
        manifests = [m for chunk in synthesize(spec_of(env)).values() for m in chunk]
        namespaces = {m["metadata"]["name"] for m in manifests if m["kind"] == "Namespace"}
        defaults = {m["metadata"]["namespace"]: m for m in manifests
                    if m["kind"] == "ServiceAccount" and m["metadata"]["name"] == "default"}
        assert set(defaults) == namespaces, env
        assert all(m["automountServiceAccountToken"] is False for m in defaults.values())


def test_helm_release_pseudo_manifest_round_trip():
    release = HelmRelease("r", "ns", "chart", "1.0.0", "https://charts.example", {"a": {"b": 1}})
    assert release.to_manifest() == {"apiVersion": "dcforge.io/v1alpha1", "kind": "HelmRelease",
                                     "metadata": {"name": "r", "namespace": "ns"},
                                     "spec": {"chart": "chart", "version": "1.0.0",
                                              "repository": "https://charts.example", "values": {"a": {"b": 1}}}}


def test_undeclared_gateway_namespace_is_created_for_the_certificates():
    spec = spec_of("prod")
    network = spec.network.model_dump(by_alias=True)
    network["namespaces"] = [ns for ns in network["namespaces"] if ns["purpose"] != "gateway"]
    network["gatewayNamespace"] = "edge"
    spec = changed(spec, network=network)
    everything = [obj for c in build_all(spec) for obj in c.all_objects()]
    created = {o["metadata"]["name"] for o in everything if o["kind"] == "Namespace"}
    assert "edge" in created
    (cert,) = [o for o in everything if o["kind"] == "Certificate" and o["metadata"]["namespace"] != "cert-manager"]
    assert cert["metadata"]["namespace"] == "edge"
    assert unexcepted(evaluate(everything, exceptions_for(spec))) == []
