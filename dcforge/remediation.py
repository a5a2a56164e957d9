"""Opt-in remediation on Kubernetes: `dcforge accept --taint-failed` (docs/executors.md#remediation).

A node that failed a node-level check gets the taint `dcforge.io/acceptance=failed:NoSchedule` (no new pod lands
on it until it passes again); a node that passes again loses it. The verdict of each node comes from the checks'
per-node rows (dcforge/report/nodes.py): failed when any row of it has a problem, passed when it has rows and none
has one; nodes without rows are left alone, and so is every other taint. `--dry-run` reads the nodes and says what
it would do without changing anything. Never on by default; only for `acceptance.target: kubernetes`, whose
ServiceAccount gets the one ClusterRole this needs (`REMEDIATION_API_ACCESS`) only where the environment sets
`dcforge:acceptance.allowNodeTaints: true`.

A node gated by its pool (`gateNewNodes: true`: it joined with `dcforge.io/validation=pending:NoSchedule`) is
released (that taint removed, action `release`) when it passes, and gets the failed taint in its place when not.
`--mark-nodes` adds the DcforgeNodeHealthy condition, annotation and events (dcforge/node_health.py).

A row names its Kubernetes node in `kubernetes_node` (the pod's spec.nodeName) where the executor knows it;
otherwise its `host` is taken as the node name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dcforge.executors.kubernetes_objects import TAINT, TAINT_TEXT
from dcforge.harness.check import ClusterAccess
from dcforge.manifests.gpu_node_pool import GATE_TAINT
from dcforge.report.nodes import judge_nodes

GATE_TAINT_TEXT = f"{GATE_TAINT['key']}={GATE_TAINT['value']}:{GATE_TAINT['effect']}"
"""A node of a pool with `gateNewNodes: true` joins with it (dcforge/manifests/gpu_node_pool.py); a passing node is
released (the taint removed), a failing one gets TAINT in its place."""


def node_verdicts(report: dict[str, Any]) -> dict[str, list[str]]:
    """Kubernetes node name -> its problems over every check's rows ([] = passed); nodes without rows absent."""
    return {node: judged.problems for node, judged in judge_nodes(report).items()}


def _ours(taint: dict[str, Any], which: dict[str, str] = TAINT) -> bool:
    return taint.get("key") == which["key"] and taint.get("effect") == which["effect"]


@dataclass
class NodeAction:
    node: str
    action: str
    """`taint`, `untaint`, `release` (the validation gate lifted), `unchanged` or `error`."""
    reason: str


@dataclass
class Remediation:
    dry_run: bool
    taint: str = TAINT_TEXT
    actions: list[NodeAction] = field(default_factory=list)
    skipped: str = ""
    """Why nothing was done at all (an interrupted run), or ''."""
    marks: list[str] = field(default_factory=list)
    """`--mark-nodes`: one line per node saying which condition, annotation and events were set."""

    def nodes(self, action: str) -> list[str]:
        return [a.node for a in self.actions if a.action == action]

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "taint": self.taint, "tainted": self.nodes("taint"),
                "untainted": self.nodes("untaint"), "released": self.nodes("release"),
                "unchanged": self.nodes("unchanged"),
                "errors": [a.reason for a in self.actions if a.action == "error"], "skipped": self.skipped,
                "marks": self.marks, "actions": [asdict(a) for a in self.actions]}


def remediate(report: dict[str, Any], api_client: Any, dry_run: bool, taint: bool = True,
              mark: bool = False) -> Remediation:
    """Taint failed nodes, untaint or release passing ones (`taint`), set their condition, annotation and events
    (`mark`, dcforge/node_health.py); or, dry, only say so. API failures are per node `error` actions naming the
    node; the other nodes are still handled."""
    from dcforge.node_health import mark as mark_node

    outcome = Remediation(dry_run)
    if report.get("metadata", {}).get("interrupted"):
        outcome.skipped = "the run was interrupted: node verdicts are incomplete"
        return outcome
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    for node, judged in sorted(judge_nodes(report).items()):
        step, released = "taint", ""
        try:
            if taint:
                done = _apply(core, node, judged.problems, dry_run)
                outcome.actions.append(done)
                released = GATE_TAINT_TEXT if done.action == "release" else ""
            if mark:
                step = "mark"
                outcome.marks.append(mark_node(core, judged, dry_run, released))
        except client.ApiException as error:
            outcome.actions.append(NodeAction(node, "error", _api_error(node, error, step)))
        except Exception as error:  # noqa: BLE001 (connection failures: urllib3, OSError; one line per node)
            outcome.actions.append(NodeAction(node, "error", f"node {node}: {str(error).splitlines()[0][:200]}"))
    return outcome


def _apply(core, node: str, problems: list[str], dry_run: bool) -> NodeAction:
    # As the API server spells them (camelCase `timeAdded`): written back unchanged
    taints = (json.loads(core.read_node(node, _preload_content=False).data).get("spec") or {}).get("taints") or []
    tainted, gated = any(_ours(t) for t in taints), any(_ours(t, GATE_TAINT) for t in taints)
    others = [t for t in taints if not _ours(t) and not _ours(t, GATE_TAINT)]
    if problems and (gated or not tainted):
        gate = f" (in place of {GATE_TAINT_TEXT})" if gated else ""
        wanted, action, reason = [*others, dict(TAINT)], "taint", "; ".join(problems) + gate
    elif not problems and gated:
        wanted, action, reason = others, "release", f"passed every node-level check: {GATE_TAINT_TEXT} removed"
    elif not problems and tainted:
        wanted, action, reason = others, "untaint", "passed every node-level check"
    else:
        return NodeAction(node, "unchanged", "; ".join(problems) if problems else "passed, not tainted")
    if not dry_run:
        # The whole list: taints carry no merge key, so a patch replaces spec.taints; the others are kept as read.
        core.patch_node(node, {"spec": {"taints": wanted}})
    return NodeAction(node, action, reason)


def _api_error(node: str, error, step: str = "taint") -> str:
    if error.status == 403:
        if step == "mark":
            return (f"node {node}: forbidden (HTTP 403): the account needs patch on nodes/status and nodes and "
                    "create on events in default, which dcforge:acceptance.allowNodeConditions: true adds")
        return (f"node {node}: forbidden (HTTP 403): the account needs get/patch on nodes, the ClusterRole "
                "dcforge:acceptance.allowNodeTaints: true adds")
    if error.status == 404:
        return f"node {node}: no such Kubernetes node (HTTP 404)"
    return f"node {node}: HTTP {error.status} {error.reason}"


def check_flags(spec, taint_failed: bool, dry_run: bool, mark_nodes: bool = False) -> None:
    """Bad input before any check runs: one line, exit 2 (DcforgeError)."""
    from dcforge.errors import DcforgeError

    if dry_run and not (taint_failed or mark_nodes):
        raise DcforgeError("--dry-run belongs to --taint-failed or --mark-nodes (dcforge accept --taint-failed "
                           "--dry-run)")
    for flag, given, what in (("--taint-failed", taint_failed, "node taints"),
                              ("--mark-nodes", mark_nodes, "node conditions")):
        if given and spec.acceptance.target != "kubernetes":
            raise DcforgeError(f"{flag}: dcforge:acceptance.target is {spec.acceptance.target}; {what} "
                               "apply only to target kubernetes")


def apply_to_report(report_dir, report: dict[str, Any], dry_run: bool, api_client: Any = None,
                    cluster: ClusterAccess | None = None, taint: bool = True, mark: bool = False) -> dict[str, Any]:
    """Remediate from a finished run's report, add it as report.json's `remediation` and rewrite the report files;
    returns that field. The client comes from `cluster` (the run's ClusterAccess: `accept --kubeconfig/--context`,
    else $KUBECONFIG, ~/.kube/config, in-cluster) unless given; a kubeconfig that does not load is one `error`
    entry, not a traceback."""
    from dcforge.executors.base import ExecutorError
    from dcforge.executors.kubernetes import client_from_kubeconfig
    from dcforge.report import write_report_files

    try:
        access = cluster or ClusterAccess()
        outcome = remediate(report, api_client or client_from_kubeconfig(access.kubeconfig, access.context), dry_run,
                            taint, mark)
    except ExecutorError as error:
        outcome = Remediation(dry_run, actions=[NodeAction("-", "error", str(error))])
    report["remediation"] = outcome.to_dict()
    write_report_files(report, report_dir)
    return report["remediation"]
