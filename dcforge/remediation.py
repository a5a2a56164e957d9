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
from dcforge.report.nodes import PAST, judge_nodes

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
    """What marks a failed node: the taint (target kubernetes), `slurm drain` (target slurm)."""
    verbs: tuple[str, ...] = ("taint", "untaint", "release")
    """The actions that change a node (target kubernetes: taints; target slurm: drain and resume)."""
    actions: list[NodeAction] = field(default_factory=list)
    skipped: str = ""
    """Why nothing was done at all (an interrupted run), or ''."""
    marks: list[str] = field(default_factory=list)
    """`--mark-nodes`: one line per node saying which condition, annotation and events were set."""

    def nodes(self, action: str) -> list[str]:
        return [a.node for a in self.actions if a.action == action]

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "taint": self.taint, **{PAST[verb]: self.nodes(verb) for verb in self.verbs},
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


def check_flags(spec, taint_failed: bool, dry_run: bool, mark_nodes: bool = False, drain_failed: bool = False) -> None:
    """Bad input before any check runs: one line, exit 2 (DcforgeError)."""
    from dcforge.errors import DcforgeError

    if dry_run and not (taint_failed or mark_nodes or drain_failed):
        raise DcforgeError("--dry-run belongs to --taint-failed, --mark-nodes or --drain-failed (dcforge accept "
                           "--taint-failed --dry-run)")
    for flag, given, what in (("--taint-failed", taint_failed, "node taints"),
                              ("--mark-nodes", mark_nodes, "node conditions")):
        if given and spec.acceptance.target != "kubernetes":
            raise DcforgeError(f"{flag}: dcforge:acceptance.target is {spec.acceptance.target}; {what} "
                               "apply only to target kubernetes")
    if drain_failed and spec.acceptance.target != "slurm":
        raise DcforgeError(f"--drain-failed: dcforge:acceptance.target is {spec.acceptance.target}; draining nodes "
                           "applies only to target slurm")


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


# --- Target slurm: `dcforge accept --drain-failed` (docs/slurm.md#drain-and-resume) ------------------------------

DRAIN_PREFIX = "dcforge: "
"""Every reason dcforge drains a node with starts so; a drained node whose reason does not is someone else's."""
REASON_LIMIT = 240


def drain_reasons(report: dict[str, Any]) -> dict[str, str]:
    """Node -> its drain reason, `dcforge: <check>: <finding>[; <check>: <finding>...]; action=<action>`, the action
    the most urgent of its rows' (dcforge.report.nodes.judge_nodes); nodes that passed are absent."""
    return {node: drain_text("; ".join(problem.replace(f": {node}: ", ": ", 1) for problem in judged.problems),
                             judged.action.value)
            for node, judged in judge_nodes(report).items() if not judged.passed}


def drain_text(finding: str, action: str) -> str:
    """`dcforge: <check>: <finding>; action=<action>` on one line, the finding shortened to fit Slurm's reason."""
    tail = f"; action={action}"
    finding = " ".join(finding.split())
    room = REASON_LIMIT - len(DRAIN_PREFIX) - len(tail)
    return DRAIN_PREFIX + (finding if len(finding) <= room else finding[:room - 1] + "…") + tail


def return_for_retest(env, dry_run: bool) -> dict[str, str]:
    """Before the checks of a `--drain-failed` run: resume every node of the pool's partition that dcforge drained,
    so the checks test it again (it is drained again at the end unless it passes); node -> the reason it had.
    A dry run resumes nothing (those nodes stay out of the checks). Nodes drained by someone else stay drained."""
    from dcforge.executors.slurm_commands import drain_reason, node_details, partition_nodes, resume
    from dcforge.executors.slurm_target import slurm_options

    options = slurm_options(env)
    client = options.client_env()
    returned = {}
    for node in partition_nodes(options.partition, client):
        reason = drain_reason(node_details(node.name, client))
        if reason is not None and reason.startswith(DRAIN_PREFIX):
            returned[node.name] = reason
            if not dry_run:
                resume(node.name, client)
    return returned


def drain_failed(report: dict[str, Any], env, dry_run: bool, returned: dict[str, str]) -> Remediation:
    """Drain the nodes that failed with their reason, leave resumed the ones dcforge had drained that passed, drain
    again those returned for a retest that no check reached; never a node someone else drained."""
    from dcforge.executors.base import ExecutorError
    from dcforge.executors.slurm_commands import drain, drain_reason, node_details, resume
    from dcforge.executors.slurm_target import slurm_options

    outcome = Remediation(dry_run, taint="slurm drain", verbs=("drain", "resume"))
    if report.get("metadata", {}).get("interrupted"):
        outcome.skipped = "the run was interrupted: node verdicts are incomplete"
        wanted: dict[str, str | None] = dict(returned)  # back as they were
    else:
        verdicts = node_verdicts(report)
        failing = drain_reasons(report)
        wanted = {node: failing.get(node) for node in verdicts}
        wanted.update({node: reason for node, reason in returned.items() if node not in verdicts})
    client = slurm_options(env).client_env()
    for node, reason in sorted(wanted.items()):
        try:
            current = drain_reason(node_details(node, client))
            if current is not None and not current.startswith(DRAIN_PREFIX):
                outcome.actions.append(NodeAction(node, "unchanged", f"drained by someone else: {current}"))
            elif reason is not None and current != reason:
                if not dry_run:
                    drain(node, reason, client)
                outcome.actions.append(NodeAction(node, "drain", reason))
            elif reason is None and (current is not None or node in returned):
                if not dry_run and current is not None:
                    resume(node, client)
                outcome.actions.append(NodeAction(node, "resume", "passed every node-level check"))
            else:
                outcome.actions.append(NodeAction(node, "unchanged", reason or "passed, not drained"))
        except ExecutorError as error:
            outcome.actions.append(NodeAction(node, "error", f"node {node}: {error}"))
    return outcome
