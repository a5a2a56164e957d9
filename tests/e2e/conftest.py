"""The end-to-end suite's cluster: any Kubernetes cluster named by environment variables (README: end-to-end tests).

    DCFORGE_E2E_KUBECONFIG   a kubeconfig with admin rights on the cluster (required; unset: every test skips)
    DCFORGE_E2E_CONTEXT      its context (default: the current one)
    DCFORGE_E2E_IMAGE        the acceptance image the node already has (default: the `cluster` environment's)
    DCFORGE_E2E_PULL_POLICY  its imagePullPolicy (default Never: the image was imported into the node)

The suite deploys what `dcforge synth --env cluster` declares (the built-in kinds; custom resources whose CRDs the
cluster lacks are left out and listed), then runs the acceptance against it. Only the real API server is used:
nothing here knows the fake of the unit tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcforge.paths import REPO_ROOT

KUBECONFIG = os.environ.get("DCFORGE_E2E_KUBECONFIG")
CONTEXT = os.environ.get("DCFORGE_E2E_CONTEXT") or None
ENV_NAME = "cluster"
FIELD_MANAGER = "dcforge-e2e"


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 (pytest's hook signature)
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="end-to-end suite: set DCFORGE_E2E_KUBECONFIG to a cluster's kubeconfig (and "
                                   "DCFORGE_E2E_IMAGE to the acceptance image loaded there; README)")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
            if not KUBECONFIG:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    assert KUBECONFIG is not None
    if not Path(KUBECONFIG).is_file():
        pytest.fail(f"DCFORGE_E2E_KUBECONFIG={KUBECONFIG}: no such file")
    return KUBECONFIG


@pytest.fixture(scope="session")
def env_file(tmp_path_factory, kubeconfig) -> Path:
    """stacks/Pulumi.cluster.yaml with the image (and pull policy) of DCFORGE_E2E_IMAGE; the context for the
    compliance check's kubectl."""
    import yaml

    data = yaml.safe_load((REPO_ROOT / "stacks" / f"Pulumi.{ENV_NAME}.yaml").read_text())
    acceptance = data["config"]["dcforge:acceptance"]
    acceptance["image"] = os.environ.get("DCFORGE_E2E_IMAGE") or acceptance["image"]
    acceptance["imagePullPolicy"] = os.environ.get("DCFORGE_E2E_PULL_POLICY") or "Never"
    path = tmp_path_factory.mktemp("env") / f"Pulumi.{ENV_NAME}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def spec(env_file):
    from dcforge.checks import CATALOG
    from dcforge.spec import load_environment

    return load_environment(path=env_file, checks=CATALOG).spec


@pytest.fixture(scope="session")
def admin(kubeconfig):
    from dcforge.executors.kubernetes import client_from_kubeconfig

    return client_from_kubeconfig(kubeconfig, CONTEXT)


@pytest.fixture(scope="session")
def deployed(spec, admin) -> Iterator[dict[str, list[str]]]:
    """Every synthesized object of a kind the cluster serves, server-side applied (what `dcforge up` would
    create); {"applied": [...], "not served": [...]} as Kind/name."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    from dcforge.synth import synthesize

    dynamic = DynamicClient(admin)
    outcome: dict[str, list[str]] = {"applied": [], "not served": []}
    ordered = sorted((obj for chunk in synthesize(spec).values() for obj in chunk),
                     key=lambda obj: obj["kind"] != "Namespace")  # namespaces before what lives in them
    for obj in ordered:
        meta = obj["metadata"]
        try:
            resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:
            outcome["not served"].append(f"{obj['kind']}/{meta['name']}")
            continue
        resource.server_side_apply(body=obj, name=meta["name"], namespace=meta.get("namespace"),
                                   field_manager=FIELD_MANAGER, force_conflicts=True)
        outcome["applied"].append(f"{obj['kind']}/{meta['name']}")
    _wait_for_service_account(admin, spec)
    yield outcome


def _wait_for_service_account(admin, spec, timeout_s: float = 30.0) -> None:
    """Pods of the run name the Acceptance ServiceAccount; it must exist before the first Job is created."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from dcforge.manifests.common import ACCEPTANCE_SERVICE_ACCOUNT, acceptance_namespace

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.CoreV1Api(admin).read_namespaced_service_account(ACCEPTANCE_SERVICE_ACCOUNT,
                                                                    acceptance_namespace(spec))
            return
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def labelled_objects(admin, spec) -> list[str]:
    """Every object in the acceptance namespace that carries the run label (what `dcforge clean` would delete)."""
    from dcforge.executors.kubernetes import LabelledObjects, api_groups
    from dcforge.executors.kubernetes_objects import RUN_LABEL
    from dcforge.manifests.common import acceptance_namespace

    objects = LabelledObjects(api_groups(admin), acceptance_namespace(spec), RUN_LABEL)
    return [f"{kind}/{name}" for kind in ("Job", "Deployment", "Pod", "Service", "PersistentVolumeClaim",
                                          "NetworkPolicy") for name in objects.names(kind)]
