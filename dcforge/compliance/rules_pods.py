"""Pod security rules (Pod Security Standards "restricted", CIS 5.2/5.7, NSA/CISA pod security)."""

from __future__ import annotations

import re
from typing import Any

from dcforge.compliance.registry import (
    LONG_RUNNING_KINDS,
    container_name,
    containers,
    namespace_of,
    pod_rule,
    resource_rule,
)

ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
ALLOWED_SELINUX_TYPES = ("container_t", "container_init_t", "container_kvm_t", "container_engine_t")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def security_context(container: dict[str, Any]) -> dict[str, Any]:
    return container.get("securityContext") or {}


def effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A container setting overrides the pod-level one (for the keys both levels have)."""
    value = security_context(container).get(key)
    return value if value is not None else (pod.get("securityContext") or {}).get(key)


@pod_rule("DCF-POD-001", "Containers are not privileged", "high",
          "CIS 5.2.2; Kyverno disallow-privileged-containers; Checkov CKV_K8S_16")
def no_privileged(manifest, pod):
    for c in containers(pod):
        if security_context(c).get("privileged") is True:
            yield f"container {container_name(c)} is privileged", "privileged"


@pod_rule("DCF-POD-002", "No host PID or IPC namespace", "high",
          "CIS 5.2.3, 5.2.4; Kyverno disallow-host-namespaces; Checkov CKV_K8S_17, CKV_K8S_18")
def no_host_pid_ipc(manifest, pod):
    for key in ("hostPID", "hostIPC"):
        if pod.get(key) is True:
            yield f"{key} is true", key


@pod_rule("DCF-POD-003", "No host network", "high",
          "CIS 5.2.5; Kyverno disallow-host-namespaces; Checkov CKV_K8S_19")
def no_host_network(manifest, pod):
    if pod.get("hostNetwork") is True:
        yield "hostNetwork is true", "hostNetwork"


@pod_rule("DCF-POD-004", "No host ports", "medium", "Kyverno disallow-host-ports; Checkov CKV_K8S_26")
def no_host_ports(manifest, pod):
    for c in containers(pod):
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                yield f"container {container_name(c)} binds hostPort {port['hostPort']}", "hostPort"


@pod_rule("DCF-POD-005", "Privilege escalation is disallowed", "high",
          "CIS 5.2.6; Kyverno disallow-privilege-escalation; Checkov CKV_K8S_20")
def no_privilege_escalation(manifest, pod):
    for c in containers(pod):
        if security_context(c).get("allowPrivilegeEscalation") is not False:
            yield f"container {container_name(c)} does not set allowPrivilegeEscalation: false"


@pod_rule("DCF-POD-006", "Containers run as non-root", "high",
          "CIS 5.2.7; Kyverno require-run-as-nonroot; Checkov CKV_K8S_23")
def run_as_non_root(manifest, pod):
    for c in containers(pod):
        if effective(pod, c, "runAsNonRoot") is not True:
            yield f"container {container_name(c)} does not set runAsNonRoot: true"
        if effective(pod, c, "runAsUser") == 0:
            yield f"container {container_name(c)} runs as UID 0"


@pod_rule("DCF-POD-007", "Containers drop ALL capabilities", "medium",
          "CIS 5.2.9; Kyverno require-drop-all; Checkov CKV_K8S_28, CKV_K8S_37")
def drop_all_capabilities(manifest, pod):
    for c in containers(pod):
        dropped = (security_context(c).get("capabilities") or {}).get("drop") or []
        if "ALL" not in dropped:
            yield f"container {container_name(c)} does not drop ALL capabilities"


@pod_rule("DCF-POD-008", "No capabilities added beyond NET_BIND_SERVICE", "high",
          "CIS 5.2.8; Kyverno disallow-capabilities-strict; Checkov CKV_K8S_25")
def no_added_capabilities(manifest, pod):
    for c in containers(pod):
        for capability in (security_context(c).get("capabilities") or {}).get("add") or []:
            if capability not in ALLOWED_ADDED_CAPABILITIES:
                yield f"container {container_name(c)} adds capability {capability}", capability


@pod_rule("DCF-POD-009", "Seccomp profile is RuntimeDefault or Localhost", "medium",
          "CIS 5.7.2; Kyverno restrict-seccomp-strict; Checkov CKV_K8S_31")
def seccomp_profile(manifest, pod):
    for c in containers(pod):
        profile = effective(pod, c, "seccompProfile") or {}
        if profile.get("type") not in ("RuntimeDefault", "Localhost"):
            yield f"container {container_name(c)} has no RuntimeDefault/Localhost seccomp profile"


@pod_rule("DCF-POD-010", "No hostPath volumes", "high",
          "NSA/CISA pod security; Kyverno disallow-host-path; CIS 5.2.12")
def no_host_path(manifest, pod):
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            path = (volume.get("hostPath") or {}).get("path", "")
            yield f"volume {volume.get('name', '?')} mounts host path {path}", path


@pod_rule("DCF-POD-011", "Read-only root filesystem", "medium",
          "NSA/CISA immutable container file systems; Checkov CKV_K8S_22")
def read_only_root(manifest, pod):
    for c in containers(pod):
        if security_context(c).get("readOnlyRootFilesystem") is not True:
            yield f"container {container_name(c)} has a writable root filesystem"


@pod_rule("DCF-POD-012", "Images are pinned (digest or explicit non-latest tag)", "medium",
          "Kyverno disallow-latest-tag; Checkov CKV_K8S_14, CKV_K8S_43")
def pinned_images(manifest, pod):
    for c in containers(pod):
        image = str(c.get("image", ""))
        if DIGEST.search(image):
            continue
        last = image.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else ""
        if not tag or tag == "latest":
            yield f"container {container_name(c)} image {image!r} is not pinned to a tag or digest"


@pod_rule("DCF-POD-013", "CPU and memory requests and a memory limit are set", "medium",
          "NSA/CISA resource policies; Checkov CKV_K8S_10, CKV_K8S_12, CKV_K8S_13")
def resources_set(manifest, pod):
    # No CPU limit is required: CFS throttling stalls data loaders and NCCL progress threads; the memory limit and
    # the namespace quota bound what a pod can take.
    for c in containers(pod):
        resources = c.get("resources") or {}
        missing = [f"requests.{r}" for r in ("cpu", "memory") if r not in (resources.get("requests") or {})]
        if "memory" not in (resources.get("limits") or {}):
            missing.append("limits.memory")
        if missing:
            yield f"container {container_name(c)} misses {', '.join(missing)}"


@pod_rule("DCF-POD-014", "Pods do not use the default ServiceAccount", "medium",
          "CIS 5.1.5; Checkov CKV_K8S_41")
def no_default_service_account(manifest, pod):
    if pod.get("serviceAccountName", "default") == "default":
        yield "pod runs as the namespace's default ServiceAccount"


@pod_rule("DCF-POD-015", "Long-running workloads have liveness and readiness probes", "low",
          "Checkov CKV_K8S_8, CKV_K8S_9")
def probes(manifest, pod):
    if manifest.get("kind") not in LONG_RUNNING_KINDS:
        return
    for c in pod.get("containers") or []:
        missing = [p for p in ("livenessProbe", "readinessProbe") if not c.get(p)]
        if missing:
            yield f"container {container_name(c)} has no {' or '.join(missing)}"


@pod_rule("DCF-POD-016", "procMount is Default", "medium", "Kyverno disallow-proc-mount; PSS baseline")
def default_proc_mount(manifest, pod):
    for c in containers(pod):
        if security_context(c).get("procMount", "Default") != "Default":
            yield f"container {container_name(c)} uses procMount {security_context(c)['procMount']}"


@pod_rule("DCF-POD-017", "Only safe sysctls", "medium", "Kyverno restrict-sysctls; PSS baseline")
def safe_sysctls(manifest, pod):
    for sysctl in (pod.get("securityContext") or {}).get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"unsafe sysctl {sysctl.get('name')}", str(sysctl.get("name"))


@pod_rule("DCF-POD-018", "Secrets are mounted as files, not environment variables", "low",
          "CIS 5.4.1; Checkov CKV_K8S_35")
def secrets_as_files(manifest, pod):
    for c in containers(pod):
        for env in c.get("env") or []:
            if (env.get("valueFrom") or {}).get("secretKeyRef"):
                yield f"container {container_name(c)} reads secret into env var {env.get('name')}"
        for source in c.get("envFrom") or []:
            if source.get("secretRef"):
                yield f"container {container_name(c)} loads a whole secret into its environment"


@pod_rule("DCF-POD-019", "AppArmor is not disabled", "medium",
          "Kyverno restrict-apparmor-profiles; PSS baseline")
def apparmor_not_unconfined(manifest, pod):
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    template_annotations = ((manifest.get("spec") or {}).get("template") or {}).get("metadata", {}) or {}
    annotations = {**annotations, **(template_annotations.get("annotations") or {})}
    for c in containers(pod):
        profile = effective(pod, c, "appArmorProfile") or {}
        legacy = annotations.get(f"container.apparmor.security.beta.kubernetes.io/{container_name(c)}")
        if profile.get("type") == "Unconfined" or legacy == "unconfined":
            yield f"container {container_name(c)} runs without AppArmor (Unconfined)"


@pod_rule("DCF-POD-020", "SELinux options are not overridden", "medium", "Kyverno disallow-selinux; PSS baseline")
def selinux_not_overridden(manifest, pod):
    for c in containers(pod):
        options = effective(pod, c, "seLinuxOptions") or {}
        if options.get("user") or options.get("role"):
            yield f"container {container_name(c)} sets SELinux user/role"
        if options.get("type") not in (None, *ALLOWED_SELINUX_TYPES):
            yield f"container {container_name(c)} sets SELinux type {options['type']}"


@resource_rule("DCF-SA-001", "ServiceAccounts do not automount tokens", "medium", "CIS 5.1.6; Checkov CKV_K8S_38")
def service_account_automount(manifest):
    if manifest.get("kind") == "ServiceAccount" and manifest.get("automountServiceAccountToken") is not False:
        yield "automountServiceAccountToken is not false"


@resource_rule("DCF-NS-002", "Nothing is deployed to the default namespace", "low", "CIS 5.7.4; Checkov CKV_K8S_21")
def not_default_namespace(manifest):
    if namespace_of(manifest) == "default":
        yield "object is in the default namespace"
