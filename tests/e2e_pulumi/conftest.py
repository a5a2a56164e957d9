"""The real-engine suite (`make e2e-pulumi`): `dcforge preview|up|destroy` with the Pulumi engine of
`make pulumi-tools`, against a real API server.

    DCFORGE_E2E_PULUMI=1      opt in (`make e2e-pulumi` sets it); unset, every test skips and says why
    DCFORGE_E2E_KUBECONFIG    a cluster to deploy to (admin rights); unset, a throw-away control plane on loopback
                              (tests/e2e_pulumi/loopback_cluster.py) when its binaries are there
    DCFORGE_PULUMI_HOME       where `make pulumi-tools` built the engine (default ~/.cache/dcforge-pulumi)

The stack is the `cluster` environment, its Helm release (cert-manager) installed from the stand-in chart in
charts/ (stack config `charts:localDir`): remote chart repositories cannot be reached here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcforge.paths import STACKS_DIR

from .loopback_cluster import admin_client, loopback_cluster, missing_parts

OPTED_IN = os.environ.get("DCFORGE_E2E_PULUMI") == "1"
KUBECONFIG = os.environ.get("DCFORGE_E2E_KUBECONFIG")
ENV_NAME = "cluster"
CHARTS = Path(__file__).parent / "charts"


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 (pytest's hook signature)
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="real-engine suite: needs the Pulumi engine (`make pulumi-tools`) and a cluster; "
                                   "run it with `make e2e-pulumi`")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
            if not OPTED_IN:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def engine():
    from dcforge.errors import DcforgeError
    from dcforge.pulumi_engine import find_engine

    try:
        return find_engine()
    except DcforgeError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory) -> Iterator[Path]:
    if KUBECONFIG:
        yield Path(KUBECONFIG)
        return
    if missing := missing_parts():
        pytest.skip(f"no cluster: set DCFORGE_E2E_KUBECONFIG, or provide {' and '.join(missing)} for a loopback one")
    with loopback_cluster(tmp_path_factory.mktemp("control-plane")) as path:
        yield path


@pytest.fixture(scope="session")
def admin(kubeconfig):
    return admin_client(kubeconfig)


@pytest.fixture(scope="session", autouse=True)
def passphrase():
    if OPTED_IN:
        os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", "dcforge-engine-tests")


def stacks_copy(folder: Path, extra_config: str = "", replace: dict[str, str] | None = None) -> Path:
    """stacks/ copied to `folder`, the environment file with `charts:localDir` (and any edits)."""
    shutil.copytree(STACKS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__", "Pulumi.*.yaml"))
    text = (STACKS_DIR / f"Pulumi.{ENV_NAME}.yaml").read_text()
    for old, new in (replace or {}).items():
        assert old in text, f"test setup: {old!r} not in Pulumi.{ENV_NAME}.yaml"
        text = text.replace(old, new)
    text = text.replace("config:\n", f"config:\n  charts:localDir: {CHARTS}\n{extra_config}", 1)
    (folder / f"Pulumi.{ENV_NAME}.yaml").write_text(text)
    return folder
