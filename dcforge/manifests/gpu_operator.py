"""GpuOperator: NVIDIA GPU Operator and Kueue releases, the device-plugin sharing config, GPU priority classes.

The driver and container toolkit are installed and pinned by Ansible on the hosts, so the operator runs with those
parts disabled and manages the device plugin, feature discovery, MIG manager and the DCGM exporter.
"""

from __future__ import annotations

from typing import Any

import yaml

from dcforge.manifests.components import ComponentManifests, HelmRelease
from dcforge.manifests.common import GPU_OPERATOR_NAMESPACE, KUEUE_NAMESPACE, metadata, platform_namespace
from dcforge.spec.models import Environment

NVIDIA_HELM_REPOSITORY = "https://helm.ngc.nvidia.com/nvidia"
KUEUE_CHART_REPOSITORY = "oci://registry.k8s.io/kueue/charts"
# Kueue is not in the environment's version table; pinned here and bumped with the golden files.
KUEUE_CHART_VERSION = "0.10.4"
KUEUE_WEBHOOK_PORT = 9443
DEVICE_PLUGIN_CONFIG_MAP = "dcforge-device-plugin-config"
DEVICE_PLUGIN_DEFAULT_KEY = "default"

# (name, value, description): the scheduling order of GPU work; inference serves users, so it preempts training.
PRIORITY_CLASSES = (
    ("dcforge-inference-critical", 100000, "Online inference serving users; preempts training."),
    ("dcforge-training-high", 10000, "Production training runs."),
    ("dcforge-training", 1000, "Default for training jobs."),
    ("dcforge-preemptible", 100, "Experiments and acceptance runs; first to be preempted."),
)


def mig_strategy(spec: Environment) -> str:
    strategies = {pool.sharing.mig_strategy for pool in spec.gpu_pools if pool.sharing.mode == "mig"}
    # One strategy per cluster: mixed is the superset when pools disagree.
    return "mixed" if "mixed" in strategies else "single"


def device_plugin_config(spec: Environment) -> dict[str, Any]:
    """One key per time-sliced pool (selected by the node label), plus the unshared default."""
    data = {DEVICE_PLUGIN_DEFAULT_KEY: yaml.safe_dump({"version": "v1", "flags": {"migStrategy": mig_strategy(spec)}},
                                                      sort_keys=True)}
    for pool in spec.gpu_pools:
        if pool.sharing.mode == "time-slicing":
            config = {
                "version": "v1",
                "flags": {"migStrategy": "none"},
                "sharing": {"timeSlicing": {"renameByDefault": False, "failRequestsGreaterThanOne": True,
                                            "resources": [{"name": "nvidia.com/gpu",
                                                           "replicas": pool.sharing.replicas}]}},
            }
            data[pool.name] = yaml.safe_dump(config, sort_keys=True)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(DEVICE_PLUGIN_CONFIG_MAP, GPU_OPERATOR_NAMESPACE), "data": data}


def gpu_operator_values(spec: Environment) -> dict[str, Any]:
    uses_mig = any(pool.sharing.mode == "mig" for pool in spec.gpu_pools)
    return {
        "driver": {"enabled": False},  # pinned driver installed by Ansible (playbooks/, role nvidia_driver)
        "toolkit": {"enabled": False},  # container toolkit pinned by Ansible as well
        # No standalone DCGM pod: the host engine that Ansible installs serves node-level tools; the exporter
        # runs its embedded engine for the metrics it exports.
        "dcgm": {"enabled": False},
        "dcgmExporter": {"enabled": True, "serviceMonitor": {"enabled": False}},
        "devicePlugin": {"enabled": True,
                         "config": {"name": DEVICE_PLUGIN_CONFIG_MAP, "default": DEVICE_PLUGIN_DEFAULT_KEY}},
        "gfd": {"enabled": True},
        "mig": {"strategy": mig_strategy(spec)},
        "migManager": {"enabled": uses_mig},
        "nfd": {"enabled": True},
        "operator": {"defaultRuntime": "containerd"},
        "validator": {"driver": {"env": [{"name": "DISABLE_DEV_CHAR_SYMLINK_CREATION", "value": "true"}]}},
        "daemonsets": {"priorityClassName": "system-node-critical",
                       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    }


def kueue_values(spec: Environment) -> dict[str, Any]:
    total = sum(pool.schedulable_gpus for pool in spec.gpu_pools)
    return {
        "controllerManager": {"replicas": 2 if total > 64 else 1},
        "enablePrometheus": False,
    }


def priority_class(name: str, value: int, description: str) -> dict[str, Any]:
    return {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": metadata(name),
            "value": value, "globalDefault": False, "preemptionPolicy": "PreemptLowerPriority",
            "description": description}


def gpu_operator(spec: Environment) -> ComponentManifests:
    releases = [
        HelmRelease(name="gpu-operator", namespace=GPU_OPERATOR_NAMESPACE, chart="gpu-operator",
                    version=spec.versions.gpu_operator, repository=NVIDIA_HELM_REPOSITORY,
                    values=gpu_operator_values(spec)),
        HelmRelease(name="kueue", namespace=KUEUE_NAMESPACE, chart="kueue", version=KUEUE_CHART_VERSION,
                    repository=KUEUE_CHART_REPOSITORY, values=kueue_values(spec)),
    ]
    manifests = [
        # The operator's pods need host access (privileged, hostPath): the namespace is privileged and its pods
        # are covered by the GPU exceptions of dcforge.compliance.
        *platform_namespace(spec, GPU_OPERATOR_NAMESPACE, "privileged"),
        *platform_namespace(spec, KUEUE_NAMESPACE, "restricted", webhook_port=KUEUE_WEBHOOK_PORT),
        device_plugin_config(spec),
        *(priority_class(*row) for row in PRIORITY_CLASSES),
    ]
    return ComponentManifests(component="GpuOperator", name="platform", manifests=manifests, releases=releases)
