"""DistributedStorage: Rook-Ceph (encrypted OSDs, msgr2 secure mode, block pool + filesystem), or local-path / NFS
for small environments; one StorageClass per spec class."""

from __future__ import annotations

from typing import Any

from dcforge.manifests.components import ComponentManifests, HelmRelease
from dcforge.manifests.common import (
    HOST_ENCRYPTION_ANNOTATION,
    NFS_CSI_NAMESPACE,
    ROOK_NAMESPACE,
    STORAGE_PURPOSE_LABEL,
    metadata,
    network_policy,
    platform_namespace,
)
from dcforge.spec.models import Environment, StorageClassSpec

ROOK_API = "ceph.rook.io/v1"
ROOK_HELM_REPOSITORY = "https://charts.rook.io/release"
ROOK_CLUSTER_NAME = "rook-ceph"
ROOK_WEBHOOK_PORT = 9443
RBD_PROVISIONER = f"{ROOK_NAMESPACE}.rbd.csi.ceph.com"
CEPHFS_PROVISIONER = f"{ROOK_NAMESPACE}.cephfs.csi.ceph.com"
LOCAL_PATH_PROVISIONER = "rancher.io/local-path"
NFS_PROVISIONER = "nfs.csi.k8s.io"
NFS_CSI_REPOSITORY = "https://raw.githubusercontent.com/kubernetes-csi/csi-driver-nfs/master/charts"
NFS_CSI_CHART_VERSION = "v4.9.0"  # not in the version table; pinned here and bumped with the golden files
# Ceph ports clients and daemons use: msgr2 (3300), legacy msgr1 (6789), OSD/MGR/MDS range.
CEPH_PORTS = ({"protocol": "TCP", "port": 3300}, {"protocol": "TCP", "port": 6789},
              {"protocol": "TCP", "port": 6800, "endPort": 7300})


def ceph_data_pool_name(cls: StorageClassSpec) -> str:
    return f"{cls.name}-data0"


def rook_operator_values(spec: Environment) -> dict[str, Any]:
    kinds = {cls.kind for cls in spec.storage.classes}
    return {
        "crds": {"enabled": True},
        "csi": {"enableRbdDriver": "block" in kinds, "enableCephfsDriver": "filesystem" in kinds,
                "enableCSIEncryption": True},
        "monitoring": {"enabled": False},
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    }


def ceph_cluster(spec: Environment) -> dict[str, Any]:
    ceph = spec.storage.ceph
    assert ceph is not None  # the model fills defaults for rook-ceph
    storage: dict[str, Any] = {
        "useAllDevices": False,
        "deviceFilter": ceph.osd_device_filter,
        "config": {"encryptedDevice": "true"},  # LUKS on every OSD; keys kept in Kubernetes secrets by Rook
    }
    if ceph.storage_nodes:
        storage["useAllNodes"] = False
        storage["nodes"] = [{"name": node} for node in ceph.storage_nodes]
    else:
        storage["useAllNodes"] = True
    return {
        "apiVersion": ROOK_API,
        "kind": "CephCluster",
        "metadata": metadata(ROOK_CLUSTER_NAME, ROOK_NAMESPACE),
        "spec": {
            "cephVersion": {"image": ceph.ceph_image, "allowUnsupported": False},
            "dataDirHostPath": "/var/lib/rook",
            "mon": {"count": ceph.mons, "allowMultiplePerNode": False},
            "mgr": {"count": 2, "allowMultiplePerNode": False},
            "dashboard": {"enabled": True, "ssl": True},
            # msgr2 secure mode: every connection between daemons and clients is encrypted on the wire.
            "network": {"connections": {"encryption": {"enabled": True}, "compression": {"enabled": False},
                                        "requireMsgr2": True}},
            "crashCollector": {"disable": False},
            "storage": storage,
            "priorityClassNames": {"mon": "system-node-critical", "osd": "system-node-critical",
                                   "mgr": "system-cluster-critical"},
            "disruptionManagement": {"managePodBudgets": True},
        },
    }


def replicated(spec: Environment, cls: StorageClassSpec) -> dict[str, Any]:
    return {"size": cls.replication, "requireSafeReplicaSize": cls.replication > 1}


def ceph_block_pool(spec: Environment, cls: StorageClassSpec) -> dict[str, Any]:
    assert spec.storage.ceph is not None
    return {"apiVersion": ROOK_API, "kind": "CephBlockPool", "metadata": metadata(cls.name, ROOK_NAMESPACE),
            "spec": {"failureDomain": spec.storage.ceph.failure_domain, "replicated": replicated(spec, cls)}}


def ceph_filesystem(spec: Environment, cls: StorageClassSpec) -> dict[str, Any]:
    assert spec.storage.ceph is not None
    domain = spec.storage.ceph.failure_domain
    return {
        "apiVersion": ROOK_API, "kind": "CephFilesystem", "metadata": metadata(cls.name, ROOK_NAMESPACE),
        "spec": {
            "metadataPool": {"failureDomain": domain, "replicated": replicated(spec, cls)},
            "dataPools": [{"name": "data0", "failureDomain": domain, "replicated": replicated(spec, cls)}],
            "preserveFilesystemOnDelete": True,
            "metadataServer": {"activeCount": 1, "activeStandby": True, "priorityClassName": "system-cluster-critical",
                               "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}},
        },
    }


def ceph_csi_secret_parameters(kind: str) -> dict[str, str]:
    secret = "rook-csi-rbd" if kind == "block" else "rook-csi-cephfs"
    return {
        "csi.storage.k8s.io/provisioner-secret-name": f"{secret}-provisioner",
        "csi.storage.k8s.io/provisioner-secret-namespace": ROOK_NAMESPACE,
        "csi.storage.k8s.io/controller-expand-secret-name": f"{secret}-provisioner",
        "csi.storage.k8s.io/controller-expand-secret-namespace": ROOK_NAMESPACE,
        "csi.storage.k8s.io/node-stage-secret-name": f"{secret}-node",
        "csi.storage.k8s.io/node-stage-secret-namespace": ROOK_NAMESPACE,
    }


def storage_class(spec: Environment, cls: StorageClassSpec) -> dict[str, Any]:
    backend = spec.storage.backend
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if cls.default else {}
    parameters: dict[str, str]
    mount_options: list[str] = []
    binding = "Immediate"
    if backend == "rook-ceph" and cls.kind == "block":
        provisioner = RBD_PROVISIONER
        parameters = {"clusterID": ROOK_NAMESPACE, "pool": cls.name, "imageFormat": "2",
                      "imageFeatures": "layering,fast-diff,object-map,deep-flatten,exclusive-lock",
                      "csi.storage.k8s.io/fstype": "ext4", **ceph_csi_secret_parameters("block")}
    elif backend == "rook-ceph":
        provisioner = CEPHFS_PROVISIONER
        parameters = {"clusterID": ROOK_NAMESPACE, "fsName": cls.name, "pool": ceph_data_pool_name(cls),
                      **ceph_csi_secret_parameters("filesystem")}
    elif backend == "nfs":
        assert spec.storage.nfs is not None
        provisioner = NFS_PROVISIONER
        parameters = {"server": spec.storage.nfs.server, "share": spec.storage.nfs.path}
        mount_options = ["nfsvers=4.1", "hard"]
    else:
        provisioner = LOCAL_PATH_PROVISIONER
        parameters = {}
        binding = "WaitForFirstConsumer"  # a local volume lives on the node of its first pod
    if cls.encrypted and provisioner == RBD_PROVISIONER:
        # ceph-csi per-volume LUKS; the passphrase is kept in the image metadata unless a KMS is configured.
        parameters["encrypted"] = "true"
        parameters["encryptionType"] = "block"
    elif cls.encrypted and provisioner == CEPHFS_PROVISIONER:
        # CephFS fscrypt needs kernel 6.6+ clients; data is encrypted by the dm-crypt OSDs (encryptedDevice) and
        # on the wire by msgr2 secure mode, both set on the CephCluster and checked by rule DCF-STO-002.
        annotations[HOST_ENCRYPTION_ANNOTATION] = "ceph-osd-dmcrypt"
    elif cls.encrypted:
        annotations[HOST_ENCRYPTION_ANNOTATION] = "host-luks"
    manifest: dict[str, Any] = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": metadata(cls.name, labels={STORAGE_PURPOSE_LABEL: cls.purpose}, annotations=annotations),
        "provisioner": provisioner,
        # Never `parameters: {}`: the API server stores it as absent and, parameters being immutable, refuses a
        # second server-side apply of the same manifest ("updates to parameters are forbidden").
        **({"parameters": parameters} if parameters else {}),
        "reclaimPolicy": cls.reclaim_policy,
        "allowVolumeExpansion": provisioner != LOCAL_PATH_PROVISIONER,
        "volumeBindingMode": binding,
    }
    if mount_options:
        manifest["mountOptions"] = mount_options
    return manifest


def allow_ceph_clients(spec: Environment) -> dict[str, Any]:
    """Kernel RBD/CephFS clients connect from node addresses (CSI node plugins use host networking)."""
    sources = [spec.network.node_cidr or spec.network.pod_cidr, spec.network.pod_cidr]
    return network_policy("allow-ceph-clients", ROOK_NAMESPACE, {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": cidr}} for cidr in dict.fromkeys(sources)],
                     "ports": [dict(port) for port in CEPH_PORTS]}],
    })


def distributed_storage(spec: Environment) -> ComponentManifests:
    backend = spec.storage.backend
    manifests: list[dict[str, Any]] = []
    releases: list[HelmRelease] = []
    if backend == "rook-ceph":
        assert spec.storage.ceph is not None
        manifests += platform_namespace(spec, ROOK_NAMESPACE, "privileged", webhook_port=ROOK_WEBHOOK_PORT)
        manifests.append(allow_ceph_clients(spec))
        releases.append(HelmRelease(name="rook-ceph", namespace=ROOK_NAMESPACE, chart="rook-ceph",
                                    version=spec.storage.ceph.operator_chart_version,
                                    repository=ROOK_HELM_REPOSITORY, values=rook_operator_values(spec)))
        manifests.append(ceph_cluster(spec))
        for cls in spec.storage.classes:
            manifests.append(ceph_block_pool(spec, cls) if cls.kind == "block" else ceph_filesystem(spec, cls))
    elif backend == "nfs":
        manifests += platform_namespace(spec, NFS_CSI_NAMESPACE, "privileged")
        releases.append(HelmRelease(name="csi-driver-nfs", namespace=NFS_CSI_NAMESPACE, chart="csi-driver-nfs",
                                    version=NFS_CSI_CHART_VERSION, repository=NFS_CSI_REPOSITORY,
                                    values={"driver": {"name": NFS_PROVISIONER}}))
    # local-path: the provisioner ships with the small distributions this backend is for (k3s, kind).
    manifests += [storage_class(spec, cls) for cls in spec.storage.classes]
    return ComponentManifests(component="DistributedStorage", name="platform", manifests=manifests, releases=releases)
