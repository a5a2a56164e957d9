"""`dcforge preview|up` of the `cluster` environment by the real Pulumi engine, against the same objects
server-side applied with the Kubernetes client (issue 25).

    python -m benchmarks.pulumi_engine      # needs `make pulumi-tools`; DCFORGE_E2E_KUBECONFIG or a loopback cluster

The engine side is one fresh stack: preview, up, a second up (nothing to change), destroy. The client side applies
what `dcforge synth --env cluster` writes, namespaces first, cert-manager's CRDs from the stand-in chart the engine
installs through Helm (the HelmRelease pseudo-manifest itself has no client equivalent), then deletes it all.
Wall seconds; the load average is printed beside them because the machine is shared.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

FIELD_MANAGER = "dcforge-benchmark"


def _client_apply(kubeconfig: Path, spec) -> tuple[float, int]:
    """Seconds to server-side apply every synthesized object the cluster serves; the objects are deleted after."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    from dcforge.synth import synthesize
    from tests.e2e_pulumi.conftest import CHARTS
    from tests.e2e_pulumi.loopback_cluster import admin_client

    dynamic = DynamicClient(admin_client(kubeconfig))
    crds = [yaml.safe_load(path.read_text()) for path in sorted((CHARTS / "cert-manager" / "crds").glob("*.yaml"))]
    objects = sorted((obj for chunk in synthesize(spec).values() for obj in chunk if obj["kind"] != "HelmRelease"),
                     key=lambda obj: obj["kind"] != "Namespace")
    applied = []
    started = time.monotonic()
    for obj in crds + objects:
        for attempt in range(30):  # a custom resource right after its CRD: served once the CRD is established
            try:
                resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
                break
            except ResourceNotFoundError:
                dynamic.resources.invalidate_cache()
                time.sleep(0.2)
        else:
            raise RuntimeError(f"{obj['kind']} is not served")
        meta = obj["metadata"]
        resource.server_side_apply(body=obj, name=meta["name"], namespace=meta.get("namespace"),
                                   field_manager=FIELD_MANAGER, force_conflicts=True)
        applied.append((resource, meta["name"], meta.get("namespace")))
    seconds = time.monotonic() - started
    for resource, name, namespace in reversed(applied):
        try:
            resource.delete(name=name, namespace=namespace)
        except Exception:  # noqa: BLE001 (gone with its namespace already)
            pass
    return seconds, len(applied)


def main() -> None:
    from dcforge import deploy
    from dcforge.checks import CATALOG
    from dcforge.spec import load_environment
    from tests.e2e_pulumi.conftest import ENV_NAME, stacks_copy
    from tests.e2e_pulumi.loopback_cluster import loopback_cluster

    os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", "dcforge-benchmark")
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dcforge-engine-bench-")))
        kubeconfig = (Path(os.environ["DCFORGE_E2E_KUBECONFIG"]) if os.environ.get("DCFORGE_E2E_KUBECONFIG")
                      else stack.enter_context(loopback_cluster(folder / "control-plane")))
        stacks = stacks_copy(folder / "stacks")
        options = deploy.DeployOptions(backend_url=f"file://{folder / 'state'}", kubeconfig=kubeconfig)
        rows = []
        for label, operation in (("preview (new stack)", "preview"), ("up (creates)", "up"),
                                 ("up again (no change)", "up"), ("destroy", "destroy")):
            result = deploy.run(operation, ENV_NAME, options, stacks_dir=stacks, on_output=None)
            rows.append((label, result.duration_s, result.changes, os.getloadavg()[0]))
        spec = load_environment(path=stacks / f"Pulumi.{ENV_NAME}.yaml", checks=CATALOG).spec
        seconds, count = _client_apply(kubeconfig, spec)
        rows.append((f"Kubernetes client server-side apply ({count} objects)", round(seconds, 2), {}, os.getloadavg()[0]))
    versions = result.versions
    print(f"engine {versions['pulumi']}, provider {versions['pulumi-resource-kubernetes']}")
    print("| step | wall s | changes | load average (1 min) |\n| --- | --- | --- | --- |")
    for label, wall, changes, load in rows:
        described = ", ".join(f"{n} {op}" for op, n in sorted(changes.items()) if n) or "--"
        print(f"| {label} | {wall:.2f} | {described} | {load:.1f} |")


if __name__ == "__main__":
    main()
