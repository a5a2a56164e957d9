"""dcforge platform stack: `pulumi up -s <env>` declares the cluster-level platform of stacks/Pulumi.<env>.yaml.

The spec is read once from the `dcforge:` config and validated by `dcforge.spec` (the same rules as
`dcforge validate`): a bad spec stops here, before any resource is registered.
"""

from __future__ import annotations

import gc

import pulumi

from components import DECLARATION_GC_THRESHOLDS, build_platform
from components.config import read_dcforge_config, spec_from_config
from components.objects import ManifestError
from dcforge.errors import DcforgeError


def main() -> None:
    gc.set_threshold(*DECLARATION_GC_THRESHOLDS)
    stack = pulumi.get_stack()
    try:
        spec = spec_from_config(read_dcforge_config(), stack, f"Pulumi.{stack}.yaml")
    except DcforgeError as error:
        # RunError: the engine prints the message alone, without a Python traceback.
        raise pulumi.RunError(str(error)) from None
    try:
        components = build_platform(spec, local_charts=pulumi.Config("charts").get("localDir"))
    except ManifestError as error:
        raise pulumi.RunError(f"dcforge manifests: {error}") from None
    pulumi.export("environment", spec.name)
    pulumi.export("gpus", spec.total_gpus)
    for component in components:
        pulumi.export(component.owner, component.summary())


main()
