"""ClusterNetwork: workload namespaces with PSA labels, default-deny policies plus the explicit allows, RDMA
secondary networks (one NetworkAttachmentDefinition per rail, NVIDIA Network Operator shared RDMA device plugin)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from dcforge.manifests.components import ComponentManifests, HelmRelease
from dcforge.manifests.common import (
    NETWORK_OPERATOR_NAMESPACE,
    POOL_LABEL,
    RDMA_LABEL,
    TEAM_LABEL,
    acceptance_namespace,
    allow_api_server,
    allow_same_namespace,
    gateway_namespaces,
    metadata,
    namespace_bundle,
    namespace_selector,
    namespaces_with_purpose,
    network_policy,
    platform_namespace,
)
from dcforge.manifests.gpu_operator import NVIDIA_HELM_REPOSITORY
from dcforge.spec.models import Environment

NAD_API = "k8s.cni.cncf.io/v1"
NETWORK_OPERATOR_CHART_VERSION = "v25.4.0"  # not in the version table; pinned here and bumped with golden files
NETWORK_OPERATOR_IMAGE_REPOSITORY = "nvcr.io/nvidia/mellanox"
RDMA_SHARED_RESOURCE = "rdma_shared_device_a"
INFERENCE_SERVING_PORT = 8000
GATEWAY_LISTEN_PORTS = (443, 8443)


def rdma_namespaces(spec: Environment) -> list[str]:
    """Namespaces whose jobs use the RDMA fabric: training namespaces and teams with training-pool quota."""
    training_pools = {p.name for p in spec.gpu_pools if p.rdma}
    teams = [t.namespace for t in spec.security.teams if any(t.gpu_quota.get(p, 0) for p in training_pools)]
    return list(dict.fromkeys(namespaces_with_purpose(spec, "training") + teams))


def workload_namespaces(spec: Environment) -> list[tuple[str, str, str, dict[str, str]]]:
    """(name, purpose, pod security level, extra labels) of every namespace this component creates."""
    rdma = set(rdma_namespaces(spec)) if spec.network.rdma.enabled else set()
    skip = {acceptance_namespace(spec)}  # created by the Acceptance component
    rows = []
    for ns in spec.network.namespaces:
        if ns.name not in skip:
            rows.append((ns.name, ns.purpose, ns.pod_security, {RDMA_LABEL: "enabled"} if ns.name in rdma else {}))
    if not namespaces_with_purpose(spec, "gateway"):
        rows.append((spec.network.gateway_namespace, "gateway", spec.security.pod_security, {}))
    for team in spec.security.teams:
        labels = {TEAM_LABEL: team.name, **({RDMA_LABEL: "enabled"} if team.namespace in rdma else {})}
        rows.append((team.namespace, "training", spec.security.pod_security, labels))
    return rows


def purpose_allows(spec: Environment, name: str, purpose: str) -> list[dict[str, Any]]:
    gateways = gateway_namespaces(spec)
    inference = namespaces_with_purpose(spec, "inference")
    acceptance = acceptance_namespace(spec)
    serving = [{"protocol": "TCP", "port": INFERENCE_SERVING_PORT}]
    if purpose == "training":
        # Ranks of a job (NCCL, rendezvous) reach each other; nothing else does.
        return [allow_same_namespace(name)]
    if purpose == "inference":
        return [network_policy("allow-from-gateway", name, {
            "podSelector": {}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [namespace_selector(ns) for ns in [*gateways, acceptance]], "ports": serving}]})]
    if purpose == "gateway":
        return [
            network_policy("allow-clients", name, {
                "podSelector": {}, "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": port} for port in GATEWAY_LISTEN_PORTS]}]}),
            network_policy("allow-to-inference", name, {
                "podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [namespace_selector(ns) for ns in inference], "ports": serving}]}),
        ]
    if purpose == "platform":
        return [allow_same_namespace(name), allow_api_server(name)]
    return []


def rail_subnets(spec: Environment) -> list[str | None]:
    """Split the RDMA CIDR evenly between rails (one subnet per interface)."""
    rdma = spec.network.rdma
    if not rdma.cidr:
        return [None] * len(rdma.interfaces)
    network = ipaddress.ip_network(rdma.cidr)
    extra_bits = max(0, (len(rdma.interfaces) - 1).bit_length())
    subnets = list(network.subnets(prefixlen_diff=extra_bits))
    return [str(subnets[i]) for i in range(len(rdma.interfaces))]


def rdma_network_attachment(spec: Environment, namespace_name: str, rail: int, interface: str,
                            subnet: str | None) -> dict[str, Any]:
    mode = spec.network.rdma.mode
    ipam: dict[str, Any] = {"type": "whereabouts", "range": subnet} if subnet else {"type": "dhcp"}
    if mode == "host-device":
        config: dict[str, Any] = {"type": "host-device", "device": interface, "ipam": ipam}
        resource = f"nvidia.com/rdma_host_device_{interface}"
    elif mode == "sriov":
        config = {"type": "sriov", "ipam": ipam}
        resource = f"nvidia.com/sriov_rdma_{interface}"
    else:
        config = {"type": "macvlan", "master": interface, "mode": "bridge", "ipam": ipam}
        resource = f"rdma/{RDMA_SHARED_RESOURCE}"
    config = {"cniVersion": "0.3.1", "name": f"rdma-rail-{rail}", **config}
    return {
        "apiVersion": NAD_API,
        "kind": "NetworkAttachmentDefinition",
        "metadata": metadata(f"rdma-rail-{rail}", namespace_name,
                             annotations={"k8s.v1.cni.cncf.io/resourceName": resource}),
        "spec": {"config": json.dumps(config, sort_keys=True)},
    }


def network_operator_image(image: str) -> dict[str, str]:
    """Component images NVIDIA publishes with each Network Operator release, tagged with the release."""
    return {"image": image, "repository": NETWORK_OPERATOR_IMAGE_REPOSITORY,
            "version": f"network-operator-{NETWORK_OPERATOR_CHART_VERSION}"}


def nic_cluster_policy(spec: Environment) -> dict[str, Any]:
    """Shared RDMA device plugin on the RDMA pools' nodes: exposes the rails' HCAs as one resource."""
    rdma_pools = [p.name for p in spec.gpu_pools if p.rdma]
    config = {"configList": [{"resourceName": RDMA_SHARED_RESOURCE, "rdmaHcaMax": 63,
                              "selectors": {"ifNames": list(spec.network.rdma.interfaces)}}]}
    return {
        "apiVersion": "mellanox.com/v1alpha1",
        "kind": "NicClusterPolicy",
        "metadata": metadata("nic-cluster-policy"),
        "spec": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                "matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": rdma_pools}]}]}},
            "rdmaSharedDevicePlugin": {**network_operator_image("k8s-rdma-shared-dev-plugin"),
                                       "config": json.dumps(config, sort_keys=True)},
            "secondaryNetwork": {"multus": network_operator_image("multus-cni"),
                                 "cniPlugins": network_operator_image("plugins"),
                                 "ipamPlugin": network_operator_image("whereabouts")},
        },
    }


def cluster_network(spec: Environment) -> ComponentManifests:
    manifests: list[dict[str, Any]] = []
    releases: list[HelmRelease] = []
    rows = workload_namespaces(spec)
    for name, purpose, pod_security, labels in rows:
        manifests += namespace_bundle(spec, name, purpose, pod_security, labels)
        manifests += purpose_allows(spec, name, purpose)
    rdma = spec.network.rdma
    if rdma.enabled:
        manifests += platform_namespace(spec, NETWORK_OPERATOR_NAMESPACE, "privileged")
        releases.append(HelmRelease(
            name="network-operator", namespace=NETWORK_OPERATOR_NAMESPACE, chart="network-operator",
            version=NETWORK_OPERATOR_CHART_VERSION, repository=NVIDIA_HELM_REPOSITORY,
            values={"nfd": {"enabled": False}, "deployCR": False,
                    "operator": {"resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                               "limits": {"memory": "512Mi"}}}}))
        if rdma.mode == "shared":
            manifests.append(nic_cluster_policy(spec))
        subnets = rail_subnets(spec)
        for ns in rdma_namespaces(spec):
            manifests += [rdma_network_attachment(spec, ns, rail, interface, subnets[rail])
                          for rail, interface in enumerate(rdma.interfaces)]
    return ComponentManifests(component="ClusterNetwork", name="platform", manifests=manifests, releases=releases)
