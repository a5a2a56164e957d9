"""The vocabulary of a finding about a node: how bad it is and what an operator should do about it.

Defined once, at the bottom of the layers (it imports nothing of dcforge), so that the GPU and fabric verdicts, the
node-level checks, the report (JSON, JUnit, HTML, per-node tables), node quarantine (`--taint-failed`, Slurm's
drain) and the node conditions all speak the same closed lists. docs/verdicts.md explains each word.
"""

from __future__ import annotations

from enum import Enum


class Severity(str, Enum):
    """How a finding weighs on its node, mildest first; `unknown` is missing evidence, never a pass."""

    PASS = "pass"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"


class Action(str, Enum):
    """What an operator should do about a finding: a short closed list, in order of urgency (least first).

    The order is what `most_urgent` uses to give a node one action from all its findings.
    """

    NONE = "none"
    RESTART_WORKLOAD = "restart_workload"
    CHECK_FABRIC = "check_fabric"
    RESET_GPU = "reset_gpu"
    REBOOT_NODE = "reboot_node"
    DRAIN_AND_SERVICE = "drain_and_service"
    CONTACT_VENDOR = "contact_vendor"

    @property
    def label(self) -> str:
        """The words shown to a person."""
        return ACTION_LABELS[self]

    @property
    def takes_node_out(self) -> bool:
        """Whether a node with this action must not take work until it is done: a node that needs a GPU reset is
        as failed as one that needs service (quarantine and drain use this)."""
        return self in NODE_OUT_OF_SERVICE


ACTION_LABELS: dict[Action, str] = {
    Action.NONE: "none",
    Action.RESTART_WORKLOAD: "restart workload",
    Action.CHECK_FABRIC: "check fabric/cabling",
    Action.RESET_GPU: "reset GPU",
    Action.REBOOT_NODE: "reboot node",
    Action.DRAIN_AND_SERVICE: "drain and service",
    Action.CONTACT_VENDOR: "contact vendor",
}
NODE_OUT_OF_SERVICE = frozenset({Action.RESET_GPU, Action.REBOOT_NODE, Action.DRAIN_AND_SERVICE,
                                 Action.CONTACT_VENDOR})
_URGENCY = {action: rank for rank, action in enumerate(Action)}


def most_urgent(actions) -> Action:
    """The one action a node gets from all of its findings' actions (`none` when there are none)."""
    return max(actions, key=_URGENCY.__getitem__, default=Action.NONE)
