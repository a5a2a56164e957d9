"""Pydantic models of one environment (`stacks/Pulumi.<env>.yaml`, `dcforge:` config namespace).

Keys are camelCase in the file (Pulumi's convention) and snake_case in Python. Every model forbids unknown keys so
that a typo is an error naming the key, not a silently ignored setting. Cross-field rules that need the whole
environment live in `dcforge.spec.validation`.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dcforge.spec.gpus import GPU_MODELS

# Kubernetes names: RFC 1123 labels (namespaces, pools, classes).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# key=value:Effect or key:Effect, as `kubectl taint` writes them.
TAINT_PATTERN = re.compile(
    r"^(?P<key>[A-Za-z0-9]([-A-Za-z0-9_./]{0,251}[A-Za-z0-9])?)"
    r"(=(?P<value>[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)?"
    r":(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$"
)
VERSION_PATTERN = r"^v?\d+(\.\d+){1,3}$"
# A container image pinned by a digest, or by a tag other than `latest` (the tag is after the last `/`).
IMAGE_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_CRON_EPOCH = datetime.datetime(2026, 1, 1)  # any instant: cronsim parses on construction
IMAGE_TAG = re.compile(r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
# MIG instances of each compute size that fit on one GPU (A100/H100/H200/B200 all cut into 7 compute slices).
MIG_SLICES_PER_GPU = {"1g": 7, "2g": 3, "3g": 2, "4g": 1, "7g": 1}


class FieldValueError(ValueError):
    """A refusal by a model validator that is about one of the model's keys (`field`, camelCase, dotted below the
    model, e.g. `quota.gpus`): the loader reports it at that key instead of at the model."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class SpecModel(BaseModel):
    """Base of every spec model: camelCase aliases, unknown keys refused, values immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Taint(SpecModel):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]

    @classmethod
    def parse(cls, text: str) -> "Taint":
        match = TAINT_PATTERN.match(text)
        if not match:
            raise ValueError(
                f"taint {text!r} is not 'key=value:Effect' with Effect NoSchedule, PreferNoSchedule or NoExecute"
            )
        return cls(key=match["key"], value=match["value"] or "", effect=match["effect"])

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


class GpuSharing(SpecModel):
    """How one physical GPU is shared between pods."""

    mode: Literal["none", "mig", "time-slicing"] = "none"
    mig_strategy: Literal["single", "mixed"] = "single"
    """MIG strategy of the device plugin (`single`: every GPU cut the same way)."""
    mig_profile: str | None = Field(default=None, pattern=r"^\d+g\.\d+gb$")
    """MIG profile applied to every GPU with the single strategy, e.g. `1g.10gb`."""
    replicas: int = Field(default=1, ge=1, le=64)
    """Time-slicing: how many pods share one GPU."""

    @model_validator(mode="after")
    def _mode_settings_agree(self) -> "GpuSharing":
        if self.mode == "mig" and self.mig_strategy == "single" and not self.mig_profile:
            raise FieldValueError("migProfile",
                                  "mode 'mig' with migStrategy 'single' needs migProfile (e.g. '1g.10gb')")
        if self.mig_profile and self.mig_profile.split(".", 1)[0] not in MIG_SLICES_PER_GPU:
            raise FieldValueError("migProfile", f"migProfile {self.mig_profile!r}: compute size must be one of "
                                                f"{', '.join(MIG_SLICES_PER_GPU)}")
        if self.mode == "time-slicing" and self.replicas < 2:
            raise FieldValueError("replicas", "mode 'time-slicing' needs replicas >= 2")
        return self


class PoolQuota(SpecModel):
    """Kueue ClusterQueue nominal quota of a pool (whole pool capacity when omitted)."""

    gpus: int | None = Field(default=None, ge=0)
    cpu: int | None = Field(default=None, ge=0)
    memory_gi: int | None = Field(default=None, ge=0)


class GpuPool(SpecModel):
    """A set of identical GPU nodes (bare metal named nodes, or a node count for a cloud node group)."""

    name: str = Field(pattern=DNS_LABEL)
    gpu_model: str
    """A key of `dcforge/spec/data/gpus.yaml`, e.g. `H100-SXM`."""
    gpus_per_node: int = Field(ge=1, le=16)
    node_count: int | None = Field(default=None, ge=1)
    nodes: list[str] = Field(default_factory=list)
    """Names of existing bare-metal nodes; when set, nodeCount may be omitted and must equal its length."""
    cpus_per_node: int = Field(default=128, ge=1)
    memory_gi_per_node: int = Field(default=1024, ge=1)
    purpose: Literal["training", "inference", "general"] = "general"
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    sharing: GpuSharing = Field(default_factory=GpuSharing)
    quota: PoolQuota = Field(default_factory=PoolQuota)
    rdma: bool = False
    """Whether the pool's nodes carry RDMA NICs attached to the secondary network."""
    gate_new_nodes: bool = False
    """Nodes join with the taint `dcforge.io/validation=pending:NoSchedule` (declared with the pool's taints);
    node-level acceptance tolerates it and `dcforge accept --taint-failed` removes it once the node passes
    (docs/node-health.md)."""

    @field_validator("gpu_model")
    @classmethod
    def _known_gpu_model(cls, value: str) -> str:
        if value not in GPU_MODELS:
            raise ValueError(f"unknown GPU model {value!r}; known: {', '.join(sorted(GPU_MODELS))}")
        return value

    @field_validator("taints", mode="before")
    @classmethod
    def _parse_taints(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Taint.parse(item) if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _nodes_and_capacity(self) -> "GpuPool":
        if self.node_count is None and not self.nodes:
            raise ValueError("give nodeCount or nodes")
        if self.nodes and self.node_count is not None and self.node_count != len(self.nodes):
            raise FieldValueError("nodeCount",
                                  f"nodeCount {self.node_count} differs from the {len(self.nodes)} names in nodes")
        if len(set(self.nodes)) != len(self.nodes):
            raise FieldValueError("nodes", "nodes lists a node twice")
        if self.sharing.mode == "mig" and not GPU_MODELS[self.gpu_model].mig_capable:
            raise FieldValueError("sharing.mode", f"GPU model {self.gpu_model} does not support MIG")
        for field, capacity in (
            ("gpus", self.schedulable_gpus),
            ("cpu", self.cpus_per_node * self.size),
            ("memoryGi", self.memory_gi_per_node * self.size),
        ):
            asked = getattr(self.quota, "memory_gi" if field == "memoryGi" else field)
            if asked is not None and asked > capacity:
                raise FieldValueError(f"quota.{field}", f"quota.{field} {asked} exceeds the pool's capacity {capacity}")
        return self

    @property
    def size(self) -> int:
        return len(self.nodes) if self.nodes else int(self.node_count or 0)

    @property
    def total_gpus(self) -> int:
        return self.size * self.gpus_per_node

    @property
    def schedulable_gpus(self) -> int:
        """GPU units the device plugin advertises: time-slicing replicas or MIG slices multiply physical GPUs."""
        if self.sharing.mode == "time-slicing":
            return self.total_gpus * self.sharing.replicas
        if self.sharing.mode == "mig" and self.sharing.mig_profile:
            return self.total_gpus * MIG_SLICES_PER_GPU[self.sharing.mig_profile.split(".", 1)[0]]
        return self.total_gpus


class StorageClassSpec(SpecModel):
    name: str = Field(pattern=DNS_LABEL)
    kind: Literal["block", "filesystem"] = "block"
    purpose: Literal["checkpoints", "datasets", "general"] = "general"
    replication: int = Field(default=3, ge=1, le=7)
    encrypted: bool = True
    reclaim_policy: Literal["Delete", "Retain"] = "Retain"
    default: bool = False


class CephSettings(SpecModel):
    mons: int = Field(default=3, ge=1, le=9)
    osd_device_filter: str = "^nvme[0-9]+n1$"
    storage_nodes: list[str] = Field(default_factory=list)
    """Nodes that host OSDs; empty means every node that matches the device filter."""
    failure_domain: Literal["host", "rack", "zone"] = "host"
    operator_chart_version: str = Field(default="v1.16.6", pattern=VERSION_PATTERN)
    ceph_image: str = "quay.io/ceph/ceph:v19.2.2"

    @field_validator("mons")
    @classmethod
    def _odd_mons(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"mons must be odd for a Paxos quorum, got {value}")
        return value


class NfsSettings(SpecModel):
    server: str
    path: str = Field(pattern=r"^/")


class Storage(SpecModel):
    backend: Literal["rook-ceph", "local-path", "nfs"]
    classes: list[StorageClassSpec] = Field(default_factory=list)
    ceph: CephSettings | None = None
    nfs: NfsSettings | None = None

    @model_validator(mode="after")
    def _backend_settings(self) -> "Storage":
        if self.backend == "nfs" and self.nfs is None:
            raise FieldValueError("nfs", "backend 'nfs' needs the nfs settings (server, path)")
        if self.backend == "rook-ceph" and self.ceph is None:
            object.__setattr__(self, "ceph", CephSettings())
        if self.backend != "rook-ceph":
            too_replicated = [c.name for c in self.classes if c.replication > 1 and self.backend == "local-path"]
            if too_replicated:
                raise FieldValueError("classes", f"backend 'local-path' cannot replicate; set replication 1 for "
                                                 f"{too_replicated}")
        if sum(1 for c in self.classes if c.default) > 1:
            raise FieldValueError("classes", "more than one storage class is marked default")
        return self


class NamespaceSpec(SpecModel):
    name: str = Field(pattern=DNS_LABEL)
    purpose: Literal["training", "inference", "acceptance", "platform", "gateway", "general"] = "general"
    pod_security: Literal["restricted", "baseline", "privileged"] = "restricted"


class RdmaNetwork(SpecModel):
    enabled: bool = False
    mode: Literal["sriov", "shared", "host-device"] = "shared"
    interfaces: list[str] = Field(default_factory=list)
    """Host RDMA interfaces (e.g. `ibp12s0`) handed to pods."""
    cidr: str | None = None
    """IP range of the secondary (RDMA) network."""

    @model_validator(mode="after")
    def _enabled_needs_interfaces(self) -> "RdmaNetwork":
        if self.enabled and not self.interfaces:
            raise FieldValueError("interfaces", "enabled RDMA needs at least one interface")
        if self.enabled and not self.cidr:
            # without a static range the secondary networks fall back to DHCP, which needs a daemon on every host
            raise FieldValueError("cidr", "enabled RDMA needs cidr, the IP range of the secondary network")
        return self


class Network(SpecModel):
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    node_cidr: str | None = None
    namespaces: list[NamespaceSpec] = Field(default_factory=list)
    rdma: RdmaNetwork = Field(default_factory=RdmaNetwork)
    gateway_namespace: str = "inference-gateway"
    """The only namespace allowed to expose NodePort/LoadBalancer services."""
    cluster_dns_namespace: str = "kube-system"

    @field_validator("pod_cidr", "service_cidr", "node_cidr")
    @classmethod
    def _valid_cidr(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=True)
            except ValueError as error:
                raise ValueError(f"not a network in CIDR form: {error}") from None
        return value


class Team(SpecModel):
    name: str = Field(pattern=DNS_LABEL)
    namespace: str = Field(pattern=DNS_LABEL)
    groups: dict[Literal["ml-engineer", "ml-viewer"], list[str]] = Field(default_factory=dict)
    """Identity-provider groups bound to each role in the team namespace."""
    gpu_quota: dict[str, int] = Field(default_factory=dict)
    """GPUs per pool name this team may use (Kueue LocalQueue into the pool's ClusterQueue)."""
    cpu_quota: int = Field(default=64, ge=1)
    memory_quota_gi: int = Field(default=512, ge=1)

    @field_validator("gpu_quota")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"GPU quotas must be >= 0, got {negative}")
        return value


class TlsIssuer(SpecModel):
    kind: Literal["self-signed-ca", "acme", "ca-secret"] = "self-signed-ca"
    acme_server: str | None = None
    acme_email: str | None = None
    ca_secret_name: str | None = None

    @model_validator(mode="after")
    def _kind_settings(self) -> "TlsIssuer":
        if self.kind == "acme" and not (self.acme_server and self.acme_email):
            raise FieldValueError("acmeServer", "kind 'acme' needs acmeServer and acmeEmail")
        if self.kind == "ca-secret" and not self.ca_secret_name:
            raise FieldValueError("caSecretName", "kind 'ca-secret' needs caSecretName")
        return self


class AuditPolicy(SpecModel):
    """The kube-apiserver audit policy of a self-managed cluster (`--audit-policy-file`), written by `dcforge synth`
    as `apiserver-audit-policy.yaml`. Always audited: Secrets access (Metadata only: a body would log the secret),
    RBAC changes (RequestResponse), pods exec/attach/portforward (Metadata), writes in the acceptance namespaces
    (Request)."""

    acceptance_namespaces: list[str] = Field(default_factory=list)
    """Namespaces whose writes are audited; default: every namespace declared with purpose `acceptance`."""
    other_requests: Literal["None", "Metadata"] = "None"
    """Level of every other request (`Metadata` audits everything, at a volume cost)."""

    @field_validator("acceptance_namespaces")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not re.fullmatch(DNS_LABEL, name)]
        if bad:
            raise ValueError(f"not a namespace name: {', '.join(bad)}")
        return value


class Security(SpecModel):
    teams: list[Team] = Field(default_factory=list)
    platform_admin_groups: list[str] = Field(default_factory=lambda: ["platform-admins"])
    tls_issuer: TlsIssuer = Field(default_factory=TlsIssuer)
    pod_security: Literal["restricted", "baseline"] = "restricted"
    """Default Pod Security Admission level of workload namespaces."""
    cert_manager_chart_version: str = Field(default="v1.16.2", pattern=VERSION_PATTERN)
    inference_hostnames: list[str] = Field(default_factory=list)
    audit_policy: AuditPolicy | None = None
    """API-server audit policy for self-managed clusters; none declared is noted by the compliance check."""


class Versions(SpecModel):
    """The pinned software stack of every GPU node. Checked against `data/compatibility.yaml`."""

    driver: str = Field(pattern=r"^\d{3}\.\d+(\.\d+)?$")
    kernel_module_type: Literal["open", "proprietary"] = "open"
    cuda: str = Field(pattern=r"^\d+\.\d+$")
    nccl: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    container_toolkit: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    fabric_manager: str | None = Field(default=None, pattern=r"^\d{3}\.\d+(\.\d+)?$")
    """Defaults to the driver version (they must be equal)."""
    dcgm: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    gpu_operator: str = Field(pattern=r"^v\d+\.\d+\.\d+$")
    kubernetes: str = Field(default="1.31", pattern=r"^\d+\.\d+$")

    @property
    def driver_branch(self) -> str:
        return self.driver.split(".", 1)[0]

    @property
    def effective_fabric_manager(self) -> str:
        return self.fabric_manager or self.driver


class AcceptanceHost(SpecModel):
    """One SSH host of the `hosts` acceptance target (docs/executors.md)."""

    name: str = Field(min_length=1)
    address: str | None = None
    """What ssh connects to and other nodes reach the host at; default: the name."""
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None


class AcceptanceHosts(SpecModel):
    """SSH hosts that multi-node checks run on: listed here, or the hosts of an Ansible inventory group."""

    hosts: list[AcceptanceHost] = Field(default_factory=list)
    inventory: str | None = None
    """An Ansible inventory (YAML), relative to the environment file, e.g. playbooks/inventories/dev/hosts.yml."""
    group: str | None = None
    """Inventory group to use; default: every host of the inventory."""
    user: str | None = None
    """Default SSH user of hosts that name none."""
    identity_file: str | None = None
    """Default private key; otherwise ssh-agent and ~/.ssh."""
    known_hosts_file: str | None = None
    """Host keys are always checked: against this file, or ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts."""
    connect_timeout_s: int = Field(default=10, ge=1, le=300)
    """An unreachable host is reported after about this long."""
    socket_ifname: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,15}$")
    """Interface the collectives use between hosts (GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME)."""

    @model_validator(mode="after")
    def _one_source(self) -> "AcceptanceHosts":
        if bool(self.hosts) == bool(self.inventory):
            raise ValueError("give either hosts or inventory (exactly one)")
        if self.group and not self.inventory:
            raise ValueError("group selects hosts of an inventory; it needs inventory")
        names = [host.name for host in self.hosts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"host names must be unique: {', '.join(duplicates)}")
        return self


CRON_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
               "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
"""The macros a CronJob's schedule accepts, as the five fields they stand for."""


def cron_fields(expression: str) -> str:
    """The five cron fields of a CronJob schedule (macros expanded); ValueError with what was expected."""
    from cronsim import CronSim, CronSimError

    fields = CRON_MACROS.get(expression.strip(), expression.strip())
    # Kubernetes' parser has no L, W or # (cronsim's extensions) and refuses a time zone inside the schedule.
    if any(c in fields for c in "LW#") or fields.startswith(("TZ=", "CRON_TZ=")):
        raise ValueError(f"schedule {expression!r}: Kubernetes CronJobs take five fields (minute hour day-of-month "
                         "month day-of-week) or @hourly/@daily/@weekly/@monthly/@yearly, without L, W, # or TZ=")
    try:
        CronSim(fields, _CRON_EPOCH)
    except CronSimError as error:
        raise ValueError(f"schedule {expression!r} is not cron syntax ({error}): expected five fields, minute hour "
                         "day-of-month month day-of-week, e.g. '0 * * * *', or @hourly/@daily/@weekly") from None
    return fields


class ScheduledAcceptance(SpecModel):
    """One CronJob of in-cluster acceptance: which checks, how often, how long at most (docs/node-health.md)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
    """Suffix of the CronJob's name (`dcforge-accept-<name>`)."""
    cron: str
    """Cron syntax, in the cluster's time zone (UTC unless `timeZone`): `0 * * * *` hourly, `0 3 * * 0` weekly."""
    checks: list[str] = Field(min_length=1)
    """Checks of `acceptance.checks` to run (`dcforge accept --only`)."""
    time_limit_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    """The Job's activeDeadlineSeconds: a run still going then is stopped (and its report kept up to there)."""
    time_zone: str | None = None
    """An IANA time zone for the schedule (CronJob `timeZone`), e.g. Europe/Berlin."""

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        cron_fields(value)
        return value


class AcceptanceMetrics(SpecModel):
    """Where `dcforge accept` publishes each run's results as Prometheus metrics (docs/prometheus.md)."""

    pushgateway: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    """A Pushgateway URL, e.g. http://pushgateway.monitoring:9091 (what scheduled runs in the cluster use)."""
    textfile: str | None = Field(default=None, pattern=r"^\S+\.prom$")
    """A node-exporter textfile path ending in .prom, written atomically after every run."""


class Acceptance(SpecModel):
    """What `dcforge accept` runs and the SLOs it judges (docs/slos.md)."""

    checks: list[str] = Field(default_factory=lambda: ["system"])
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-check settings, validated by each check's own Config model."""
    slos: dict[str, str | list[str]] = Field(default_factory=dict)
    """`<check>.<metric>[.<stat>]: "<op> <number>"`, or a list of such expressions that must all hold."""
    timeouts_s: dict[str, float] = Field(default_factory=dict)
    """Per-check wall-clock limit in seconds; a check that runs over is an error."""
    default_timeout_s: float = Field(default=900.0, gt=0)
    target: Literal["local", "kubernetes", "hosts"] = "local"
    hosts: AcceptanceHosts | None = None
    """The SSH hosts of target `hosts` (multi-node checks); required there."""
    pool: str | None = None
    """Pool whose node this acceptance runs on (node-level acceptance); defaults to the first pool."""
    image: str | None = None
    """The acceptance image (`Containerfile`) the kubernetes executor runs every workload in, pinned by a tag
    (`registry.example/dcforge:0.1.0`) or a digest (`...@sha256:<64 hex>`); `latest` or no tag is refused."""
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    allow_node_taints: bool = False
    """Grant the harness's ServiceAccount get/patch on nodes (a ClusterRole), which `dcforge accept --taint-failed`
    needs to taint failed nodes (dcforge/remediation.py); off by default."""
    allow_node_conditions: bool = False
    """Grant the harness's ServiceAccount what `dcforge accept --mark-nodes` needs: patch on nodes/status (the
    DcforgeNodeHealthy condition), patch on nodes (the recommended-action annotation) and create on Events in
    `default` (docs/node-health.md); off by default."""
    schedule: list[ScheduledAcceptance] = Field(default_factory=list)
    """CronJobs running `dcforge accept` in the acceptance namespace (in-cluster); needs target kubernetes."""
    keep_reports: int = Field(default=5, ge=1, le=100)
    """Scheduled runs: how many of the last reports are kept, one ConfigMap each, per schedule."""
    metrics: AcceptanceMetrics = Field(default_factory=AcceptanceMetrics)
    profile: str | None = None
    """Threshold profile filling default SLOs (`dcforge/spec/data/profiles/`): `auto` (the acceptance pool's GPU
    model and GPUs per node), a profile name, or a `.yaml` path relative to this file. Explicit SLOs override."""

    @field_validator("image")
    @classmethod
    def _pinned_image(cls, value: str | None) -> str | None:
        if value is None or IMAGE_DIGEST.search(value):
            return value
        tag = IMAGE_TAG.search(value.rsplit("/", 1)[-1])
        if not tag or tag["tag"] == "latest" or any(c.isspace() for c in value):
            raise ValueError(f"image {value!r} is not pinned: give a tag other than latest (repo/dcforge:0.1.0) "
                             f"or a digest (repo/dcforge@sha256:<64 hex digits>)")
        return value

    @model_validator(mode="after")
    def _hosts_target_has_hosts(self) -> "Acceptance":
        if self.target == "hosts" and self.hosts is None:
            raise ValueError("target hosts needs `hosts` (a list of hosts or an inventory)")
        if self.schedule and (self.target != "kubernetes" or self.image is None):
            raise FieldValueError("schedule", "a schedule runs in the cluster: it needs target: kubernetes and "
                                  "an image (the acceptance image the CronJob runs)")
        for index, run in enumerate(self.schedule):
            if unknown := [c for c in run.checks if c not in self.checks]:
                raise FieldValueError(f"schedule[{index}].checks", f"{', '.join(unknown)} not in acceptance.checks "
                                      f"({', '.join(self.checks)})")
        if len({run.name for run in self.schedule}) != len(self.schedule):
            raise FieldValueError("schedule", "two schedules share a name")
        return self


class Monitoring(SpecModel):
    """Scrape configuration for a Prometheus operator already running in the cluster (its CRDs must be present):
    a ServiceMonitor for the GPU Operator's DCGM exporter and a PodMonitor for the inference servers."""

    prometheus_operator: bool = False
    """Declare ServiceMonitor/PodMonitor objects (needs the monitoring.coreos.com CRDs in the cluster)."""
    scrape_interval: str = Field(default="30s", pattern=r"^[1-9]\d*(s|m)$")
    selector_labels: dict[str, str] = Field(default_factory=dict)
    """Labels the Prometheus selects monitors by (its serviceMonitorSelector/podMonitorSelector),
    e.g. {release: kube-prometheus-stack}."""
    acceptance_alerts: bool = False
    """Declare the PrometheusRule `dcforge-acceptance` (a node failed two scheduled runs in a row); needs
    prometheusOperator and an `acceptance.schedule`."""

    @model_validator(mode="after")
    def _alerts_need_the_operator(self) -> "Monitoring":
        if self.acceptance_alerts and not self.prometheus_operator:
            raise FieldValueError("acceptanceAlerts", "acceptanceAlerts declares a PrometheusRule: it needs "
                                  "prometheusOperator: true (the monitoring.coreos.com CRDs)")
        return self


class EnvironmentMeta(SpecModel):
    description: str = ""
    kind: Literal["local", "dev", "staging", "prod"] = "dev"
    """`prod` environments get the strictest cross-field rules (LTS driver branches only)."""


class Environment(SpecModel):
    """One environment file, validated."""

    name: str
    environment: EnvironmentMeta = Field(default_factory=EnvironmentMeta)
    gpu_pools: list[GpuPool] = Field(default_factory=list)
    storage: Storage
    network: Network = Field(default_factory=Network)
    security: Security = Field(default_factory=Security)
    versions: Versions
    acceptance: Acceptance = Field(default_factory=Acceptance)
    monitoring: Monitoring = Field(default_factory=Monitoring)

    @property
    def total_gpus(self) -> int:
        return sum(pool.total_gpus for pool in self.gpu_pools)

    @property
    def acceptance_pool(self) -> GpuPool | None:
        """The pool whose node the node-level acceptance runs on: `acceptance.pool`, else the first pool, else
        None (an environment without GPU pools)."""
        if self.acceptance.pool is not None:
            return self.pool(self.acceptance.pool)
        return self.gpu_pools[0] if self.gpu_pools else None

    def pool(self, name: str) -> GpuPool:
        for pool in self.gpu_pools:
            if pool.name == name:
                return pool
        raise KeyError(name)
