"""How the storage classes are claimed on the Kubernetes target: the access mode a claim of each class asks for.

The claims themselves are made by the kubernetes executor (dcforge/executors/kubernetes_objects.py
`checkpoint_claim`): the checkpoints of the training checks, and one claim per class for the storage check's pods.
"""

from __future__ import annotations

from dcforge.spec.models import StorageClassSpec


def access_mode(cls: StorageClassSpec) -> str:
    """ReadWriteMany for a shared filesystem, ReadWriteOnce for a block class (mounted by one node at a time)."""
    return "ReadWriteMany" if cls.kind == "filesystem" else "ReadWriteOnce"
