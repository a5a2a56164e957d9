"""Every compliance rule: a compliant set passes all of them; one deliberate mutation per rule is caught by that
rule (and the verdict names the right object); exceptions are scoped by namespace and detail."""

from __future__ import annotations

import copy

import pytest

from dcforge.compliance import GPU_EXCEPTIONS, RULES, RULES_BY_ID, Violation, evaluate, exceptions_for, unexcepted
from dcforge.compliance.rules_cluster import selects
from dcforge.spec import load_environment

LABELS = {"app": "llm"}
SECURE_CONTEXT = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}}


def namespace(name: str, purpose: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
        "dcforge.io/purpose": purpose, "pod-security.kubernetes.io/enforce": "restricted", **labels}}}


def deny_all(ns: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-all", "namespace": ns},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}


def compliant_set() -> list[dict]:
    """An inference service done right, a team namespace, RBAC, storage and a Ceph cluster."""
    container = {
        "name": "server", "image": "registry.example/llm-server:1.4.2",
        "securityContext": dict(copy.deepcopy(SECURE_CONTEXT)),
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}},
        "ports": [{"containerPort": 8000}],
    }
    pod = {"serviceAccountName": "workload", "automountServiceAccountToken": False,
           "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
           "containers": [container], "volumes": [{"name": "cache", "emptyDir": {}}]}
    return [
        namespace("inference", "inference"),
        namespace("gateway", "gateway"),
        namespace("team-a", "training", **{"dcforge.io/team": "a"}),
        deny_all("inference"), deny_all("gateway"), deny_all("team-a"),
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "team-a"},
         "spec": {"hard": {"requests.cpu": "8"}}},
        {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "l", "namespace": "team-a"},
         "spec": {"limits": [{"type": "Container", "default": {"memory": "1Gi"}}]}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "workload", "namespace": "inference"},
         "automountServiceAccountToken": False},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llm", "namespace": "inference"},
         "spec": {"replicas": 2, "selector": {"matchLabels": LABELS},
                  "template": {"metadata": {"labels": LABELS}, "spec": pod}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "llm", "namespace": "inference"},
         "spec": {"minAvailable": 1, "selector": {"matchLabels": LABELS}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "llm", "namespace": "inference"},
         "spec": {"type": "ClusterIP", "selector": LABELS, "ports": [{"port": 8000}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge", "namespace": "gateway"},
         "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "llm", "namespace": "gateway"},
         "spec": {"tls": [{"hosts": ["llm.example"], "secretName": "llm-tls"}], "rules": []}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "viewer"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "viewers", "namespace": "team-a"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "viewer"},
         "subjects": [{"kind": "Group", "name": "viewers", "apiGroup": "rbac.authorization.k8s.io"}]},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "ckpt"},
         "provisioner": "rook-ceph.rbd.csi.ceph.com", "parameters": {"encrypted": "true"}},
        {"apiVersion": "ceph.rook.io/v1", "kind": "CephCluster", "metadata": {"name": "c", "namespace": "inference"},
         "spec": {"network": {"connections": {"encryption": {"enabled": True}, "requireMsgr2": True}},
                  "storage": {"config": {"encryptedDevice": "true"}}}},
    ]


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_of(objects):
    return find(objects, "Deployment", "llm")["spec"]["template"]["spec"]


def container_of(objects):
    return pod_of(objects)["containers"][0]


def context_of(objects):
    return container_of(objects)["securityContext"]


def set_key(getter, key, value):
    return lambda objs: getter(objs).__setitem__(key, value)


def rbac_rule(objs):
    return find(objs, "ClusterRole", "viewer")["rules"][0]


# rule id -> (mutation breaking exactly that rule, the resource the violation must name)
DEPLOYMENT = "Deployment/inference/llm"
MUTATIONS = {
    "DCF-POD-001": (set_key(context_of, "privileged", True), DEPLOYMENT),
    "DCF-POD-002": (set_key(pod_of, "hostPID", True), DEPLOYMENT),
    "DCF-POD-003": (set_key(pod_of, "hostNetwork", True), DEPLOYMENT),
    "DCF-POD-004": (lambda o: container_of(o)["ports"][0].__setitem__("hostPort", 8000), DEPLOYMENT),
    "DCF-POD-005": (lambda o: context_of(o).pop("allowPrivilegeEscalation"), DEPLOYMENT),
    "DCF-POD-006": (lambda o: pod_of(o)["securityContext"].pop("runAsNonRoot"), DEPLOYMENT),
    "DCF-POD-007": (lambda o: context_of(o).__setitem__("capabilities", {"drop": ["NET_RAW"]}), DEPLOYMENT),
    "DCF-POD-008": (lambda o: context_of(o)["capabilities"].__setitem__("add", ["SYS_ADMIN"]), DEPLOYMENT),
    "DCF-POD-009": (lambda o: pod_of(o)["securityContext"].pop("seccompProfile"), DEPLOYMENT),
    "DCF-POD-010": (lambda o: pod_of(o)["volumes"].append({"name": "h", "hostPath": {"path": "/etc"}}), DEPLOYMENT),
    "DCF-POD-011": (set_key(context_of, "readOnlyRootFilesystem", False), DEPLOYMENT),
    "DCF-POD-012": (set_key(container_of, "image", "registry.example/llm-server:latest"), DEPLOYMENT),
    "DCF-POD-013": (lambda o: container_of(o)["resources"].pop("limits"), DEPLOYMENT),
    "DCF-POD-014": (lambda o: pod_of(o).pop("serviceAccountName"), DEPLOYMENT),
    "DCF-POD-015": (lambda o: container_of(o).pop("readinessProbe"), DEPLOYMENT),
    "DCF-POD-016": (set_key(context_of, "procMount", "Unmasked"), DEPLOYMENT),
    "DCF-POD-017": (lambda o: pod_of(o)["securityContext"].__setitem__(
        "sysctls", [{"name": "kernel.msgmax", "value": "1"}]), DEPLOYMENT),
    "DCF-POD-018": (lambda o: container_of(o).__setitem__(
        "env", [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]), DEPLOYMENT),
    "DCF-POD-019": (set_key(context_of, "appArmorProfile", {"type": "Unconfined"}), DEPLOYMENT),
    "DCF-POD-020": (lambda o: pod_of(o)["securityContext"].__setitem__("seLinuxOptions", {"type": "spc_t"}),
                    DEPLOYMENT),
    "DCF-SA-001": (lambda o: find(o, "ServiceAccount", "workload").pop("automountServiceAccountToken"),
                   "ServiceAccount/inference/workload"),
    "DCF-NS-001": (lambda o: find(o, "Namespace", "gateway")["metadata"]["labels"].pop(
        "pod-security.kubernetes.io/enforce"), "Namespace/gateway"),
    "DCF-NS-002": (lambda o: find(o, "Service", "llm")["metadata"].__setitem__("namespace", "default"),
                   "Service/default/llm"),
    "DCF-RBAC-001": (lambda o: rbac_rule(o).__setitem__("verbs", ["*"]), "ClusterRole/viewer"),
    "DCF-RBAC-002": (lambda o: rbac_rule(o)["verbs"].append("escalate"), "ClusterRole/viewer"),
    "DCF-RBAC-003": (lambda o: rbac_rule(o).__setitem__("resources", ["pods", "secrets"]), "ClusterRole/viewer"),
    "DCF-RBAC-004": (lambda o: find(o, "RoleBinding", "viewers")["roleRef"].__setitem__("name", "cluster-admin"),
                     "RoleBinding/team-a/viewers"),
    "DCF-RBAC-005": (lambda o: find(o, "RoleBinding", "viewers")["subjects"].append(
        {"kind": "Group", "name": "system:unauthenticated"}), "RoleBinding/team-a/viewers"),
    "DCF-NET-001": (lambda o: o.remove(find(o, "NetworkPolicy", "default-deny-all")), "Namespace/inference"),
    "DCF-NET-002": (lambda o: find(o, "Service", "llm")["spec"].__setitem__("type", "NodePort"),
                    "Service/inference/llm"),
    "DCF-NET-003": (lambda o: find(o, "Service", "llm")["spec"].__setitem__("externalIPs", ["1.2.3.4"]),
                    "Service/inference/llm"),
    "DCF-NET-004": (lambda o: find(o, "Ingress", "llm")["spec"].pop("tls"), "Ingress/gateway/llm"),
    "DCF-STO-001": (lambda o: find(o, "StorageClass", "ckpt")["parameters"].pop("encrypted"), "StorageClass/ckpt"),
    "DCF-STO-002": (lambda o: find(o, "CephCluster", "c")["spec"]["storage"]["config"].__setitem__(
        "encryptedDevice", "false"), "CephCluster/inference/c"),
    "DCF-AVL-001": (lambda o: find(o, "Deployment", "llm")["spec"].__setitem__("replicas", 1), DEPLOYMENT),
    "DCF-AVL-002": (lambda o: find(o, "PodDisruptionBudget", "llm")["spec"].__setitem__(
        "selector", {"matchLabels": {"app": "other"}}), DEPLOYMENT),
    "DCF-RES-001": (lambda o: o.remove(find(o, "LimitRange", "l")), "Namespace/team-a"),
}


def test_catalogue_has_at_least_25_rules_with_sources():
    assert len(RULES) >= 25
    assert len({r.id for r in RULES}) == len(RULES)
    for rule in RULES:
        assert rule.title and rule.source and rule.severity in ("high", "medium", "low")
        assert rule.scope in ("resource", "set")
    assert {r.scope for r in RULES} == {"resource", "set"}


def test_every_rule_has_a_non_compliant_case():
    assert set(MUTATIONS) == set(RULES_BY_ID)


def test_compliant_set_passes_every_rule():
    assert evaluate(compliant_set(), exceptions=()) == []


@pytest.mark.parametrize("rule_id", sorted(MUTATIONS))
def test_non_compliant_manifest_is_caught_by_its_rule(rule_id):
    mutate, resource = MUTATIONS[rule_id]
    objects = compliant_set()
    mutate(objects)
    found = evaluate(objects, exceptions=())
    assert {v.rule_id for v in found} == {rule_id}, found
    assert {v.resource for v in found} == {resource}
    # each rule judged alone (as the policy pack does) gives the same verdict
    assert RULES_BY_ID[rule_id].check(objects) == [v for v in found]


def test_resource_rules_judge_one_manifest_alone():
    deployment = find(compliant_set(), "Deployment", "llm")
    deployment["spec"]["template"]["spec"]["hostIPC"] = True
    for rule in RULES:
        if rule.scope == "resource":
            verdicts = rule.check([deployment])
            assert bool(verdicts) == (rule.id == "DCF-POD-002"), (rule.id, verdicts)


def test_pod_rules_cover_every_workload_kind():
    template = find(compliant_set(), "Deployment", "llm")["spec"]["template"]
    template["spec"]["containers"][0]["securityContext"]["privileged"] = True
    wrapped = [
        {"kind": "Pod", "metadata": {"name": "p", "namespace": "x"}, "spec": template["spec"]},
        {"kind": "Job", "metadata": {"name": "j", "namespace": "x"}, "spec": {"template": template}},
        {"kind": "CronJob", "metadata": {"name": "c", "namespace": "x"},
         "spec": {"jobTemplate": {"spec": {"template": template}}}},
        {"kind": "DaemonSet", "metadata": {"name": "d", "namespace": "x"}, "spec": {"template": template}},
        {"kind": "StatefulSet", "metadata": {"name": "s", "namespace": "x"}, "spec": {"template": template}},
    ]
    found = RULES_BY_ID["DCF-POD-001"].check(wrapped)
    assert [v.resource for v in found] == ["Pod/x/p", "Job/x/j", "CronJob/x/c", "DaemonSet/x/d", "StatefulSet/x/s"]


def test_init_containers_are_judged():
    objects = compliant_set()
    pod_of(objects)["initContainers"] = [{**copy.deepcopy(container_of(objects)), "name": "init", "image": "busybox"}]
    found = evaluate(objects, exceptions=())
    assert [(v.rule_id, v.message) for v in found] == [
        ("DCF-POD-012", "container init image 'busybox' is not pinned to a tag or digest")]


def test_image_digest_counts_as_pinned():
    objects = compliant_set()
    container_of(objects)["image"] = "registry.example:5000/llm@sha256:" + "a" * 64
    assert evaluate(objects, exceptions=()) == []
    container_of(objects)["image"] = "registry.example:5000/llm"  # a registry port is not a tag
    assert [v.rule_id for v in evaluate(objects, exceptions=())] == ["DCF-POD-012"]


def privileged_daemon(namespace_name: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": namespace_name},
            "spec": {"template": {"spec": {
                "serviceAccountName": "agent", "automountServiceAccountToken": False,
                "volumes": [{"name": "plugins", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}],
                "containers": [{"name": "agent", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
                                "securityContext": {"privileged": True},
                                "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                              "limits": {"memory": "1Gi"}},
                                "livenessProbe": {"exec": {"command": ["true"]}},
                                "readinessProbe": {"exec": {"command": ["true"]}}}]}}}}


RESOURCE_RULES = [rule for rule in RULES if rule.scope == "resource"]


def test_gpu_operator_exception_is_scoped_to_its_namespace():
    inside = evaluate([privileged_daemon("gpu-operator")], rules=RESOURCE_RULES)
    assert inside and all(v.excepted and v.exception == "EXC-GPU-OPERATOR" for v in inside)
    assert {"DCF-POD-001", "DCF-POD-010"} <= {v.rule_id for v in inside}
    outside = evaluate([privileged_daemon("training")], rules=RESOURCE_RULES)
    assert {v.rule_id for v in unexcepted(outside)} == {v.rule_id for v in inside}
    assert not any(v.excepted for v in outside)


def test_rdma_exception_covers_only_ipc_lock_in_rdma_namespaces():
    def training_job(capabilities: list[str], namespace_name: str) -> list[dict]:
        objects = compliant_set()
        context_of(objects)["capabilities"]["add"] = capabilities
        find(objects, "Deployment", "llm")["metadata"]["namespace"] = namespace_name
        return [find(objects, "Deployment", "llm")]

    ipc_lock = evaluate(training_job(["IPC_LOCK"], "training"), rules=RESOURCE_RULES)
    assert [(v.rule_id, v.excepted, v.exception) for v in ipc_lock] == [("DCF-POD-008", True, "EXC-RDMA-IPC-LOCK")]
    both = evaluate(training_job(["IPC_LOCK", "SYS_ADMIN"], "training"), rules=RESOURCE_RULES)
    assert [(v.detail, v.excepted) for v in both] == [("IPC_LOCK", True), ("SYS_ADMIN", False)]
    elsewhere = evaluate(training_job(["IPC_LOCK"], "inference"), rules=RESOURCE_RULES)
    assert [v.excepted for v in elsewhere] == [False]


def test_exceptions_follow_the_environments_rdma_namespaces():
    prod = exceptions_for(load_environment("prod").spec)
    rdma = next(e for e in prod if e.id == "EXC-RDMA-IPC-LOCK")
    assert set(rdma.namespaces) == {"training", "team-research", "team-applied"}
    local = exceptions_for(load_environment("local").spec)
    assert "EXC-RDMA-IPC-LOCK" not in {e.id for e in local}
    assert {e.id for e in GPU_EXCEPTIONS} >= {"EXC-GPU-OPERATOR", "EXC-RDMA-IPC-LOCK"}


def test_pdb_selector_expressions():
    pdb = {"spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["llm"]}]}}}
    assert selects(pdb, {"app": "llm"}) and not selects(pdb, {"app": "x"})
    assert not selects({"spec": {"selector": {}}}, {"app": "llm"})  # an empty selector is not a budget for anything


def test_violation_ids_name_kind_namespace_and_name():
    found = evaluate([{"kind": "Pod", "metadata": {"name": "p", "namespace": "n"}, "spec": {"hostPID": True,
                                                                                         "containers": []}}], ())
    assert Violation("DCF-POD-002", "Pod/n/p", "hostPID is true", detail="hostPID") in found
