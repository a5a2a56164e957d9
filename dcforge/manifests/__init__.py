"""Pure functions: environment spec -> Kubernetes manifest dicts (wire form, camelCase).

The Pulumi components in `stacks/`, offline `dcforge synth`, the compliance rules and the golden-file tests all see
the same dicts. Nothing here talks to a cluster or to Pulumi.

Conventions the stacks engineer relies on:
- `ComponentManifests.manifests` is in dependency order (Namespaces before the objects placed in them, CRD users
  after the release that installs the CRD).
- Named bare-metal nodes appear as `{"apiVersion": "v1", "kind": "Node", "metadata": {"name", "labels"},
  "spec": {"taints": [...]}}` (applied as a NodePatch).
- Secrets are `kind: Secret` dicts with `stringData` (turned into Pulumi secrets).
- Custom resources (Kueue, Rook-Ceph, cert-manager, NetworkAttachmentDefinition) are plain dicts too.
"""

from __future__ import annotations

from dcforge.manifests.components import HELM_RELEASE_API_VERSION, ComponentManifests, HelmRelease  # noqa: F401
from dcforge.manifests.build import build_all  # noqa: F401

# One module per component, named after it (GpuOperator -> gpu_operator.py, Acceptance -> acceptance.py), each
# defining the builder function of the same name; `dcforge.manifests.build` gathers them. They are not re-exported
# here: a function named like its module would shadow the module (`import dcforge.manifests.acceptance`).

__all__ = ["HELM_RELEASE_API_VERSION", "ComponentManifests", "HelmRelease", "build_all"]
