"""The per-node table a check may put in `details.nodes`: one row per node, shown in the HTML report and as a
JUnit testcase per node.

A row is a JSON object with at least `host`; `state` (a node's process outcome: succeeded, failed, killed, ...),
`verdict` (`slow`, `suspect`, `cleared`, ...) and `outlier` (true when the node is more than the configured
fraction below the pool median; `outlier_in`, when present, lists the figures in which it is one) and
`problem` (a check's own reason the node failed, e.g. NCCL fell back to Socket where RDMA is declared)
decide whether the node passed, and so does `action` (dcforge.findings.Action: the node's recommended action): a node
whose action takes it out of service (reset GPU, reboot node, drain and service, contact vendor) did not pass even
where nothing else says so. A row without `action` may carry `findings` (`[{"severity", "action", ...}]`) whose
most urgent action is the node's (`row_action`). Other keys are figures, shown as columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcforge.findings import Action, most_urgent

BAD_STATES = {"failed", "killed", "pending", "running"}
BAD_VERDICTS = {"slow", "suspect"}


def node_rows(check: dict[str, Any]) -> list[dict[str, Any]]:
    rows = (check.get("details") or {}).get("nodes")
    if not isinstance(rows, list):
        return []
    return [row for row in rows if isinstance(row, dict) and "host" in row]


def node_action(row: dict[str, Any]) -> Action:
    """The row's recommended action (`none` when it has none or one dcforge does not know)."""
    try:
        return Action(row.get("action") or "none")
    except ValueError:
        return Action.NONE


def node_problem(row: dict[str, Any]) -> str:
    """Why this node did not pass, or '' when it did; a node that needs an operator's action says which."""
    problem = _row_problem(row)
    action = node_action(row)
    if problem and action is not Action.NONE:
        return f"{problem} (action: {action.label})"
    if action.takes_node_out:
        return f"{row['host']}: action: {action.label}"
    return problem


def _row_problem(row: dict[str, Any]) -> str:
    if row.get("state") in BAD_STATES:
        reason = f": {row['reason']}" if row.get("reason") else ""
        return f"{row['host']}: {row['state']}" + (f" (exit {row['exit_code']})" if row.get("exit_code") is not None
                                                   else "") + reason
    if row.get("verdict") in BAD_VERDICTS:
        return f"{row['host']}: {row['verdict']} node"
    if row.get("outlier"):
        figures = f" in {', '.join(row['outlier_in'])}" if row.get("outlier_in") else ""
        return f"{row['host']}: outlier{figures}, more than the configured fraction below the pool median"
    if row.get("problem"):
        return f"{row['host']}: {row['problem']}"
    return ""


NODE_KEY = "kubernetes_node"
"""A row's Kubernetes node name (the pod's spec.nodeName) where the executor knows it; otherwise `host` names it."""
ACTION_KEY = "action"
"""A row's recommended action (a word of dcforge.findings.Action) where its check judged one."""
ACTION_WORDS = frozenset(action.value for action in Action)
FAILED_WITHOUT_ACTION = Action.DRAIN_AND_SERVICE
"""The action of a failed row that names none: the node is taken out until someone looks at it."""


@dataclass
class NodeJudgement:
    """One node's verdict over every check that has rows for it."""

    node: str
    checks: dict[str, bool] = field(default_factory=dict)
    """Check name -> whether the node passed it."""
    problems: list[str] = field(default_factory=list)
    """`<check>: <problem>` for every failed row, in report order."""
    actions: list[Action] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def action(self) -> Action:
        """The most urgent recommended action of its rows (dcforge.findings.most_urgent)."""
        return most_urgent(self.actions)

    @property
    def failed_check(self) -> str:
        """The check of the first problem, '' when it passed."""
        return self.problems[0].split(":", 1)[0] if self.problems else ""


def row_action(row: dict[str, Any]) -> Action:
    """The action a node gets from this row: its own `action` where it names a word of Action (node_action), else
    the most urgent action of its `findings`, else drain_and_service for a failed row and none for a passed one."""
    if row.get(ACTION_KEY) in ACTION_WORDS:
        return node_action(row)
    findings = row.get("findings") if isinstance(row.get("findings"), list) else []
    judged = [Action(f[ACTION_KEY]) for f in findings if isinstance(f, dict) and f.get(ACTION_KEY) in ACTION_WORDS]
    if judged:
        return most_urgent(judged)
    return FAILED_WITHOUT_ACTION if node_problem(row) else Action.NONE


def judge_nodes(report: dict[str, Any]) -> dict[str, NodeJudgement]:
    """Kubernetes node name -> its judgement over every check's rows; nodes without rows are absent."""
    nodes: dict[str, NodeJudgement] = {}
    for check in report.get("checks", []):
        for row in node_rows(check):
            name = str(row.get(NODE_KEY) or row["host"])
            judged = nodes.setdefault(name, NodeJudgement(name))
            problem = node_problem(row)
            judged.checks[check["name"]] = judged.checks.get(check["name"], True) and not problem
            judged.actions.append(row_action(row))
            if problem:
                judged.problems.append(f"{check['name']}: {problem}")
    return nodes


def summary_line(remediation: dict[str, Any]) -> str:
    """One line for the console and the HTML report, from report.json's `remediation`."""
    if remediation.get("skipped"):
        return f"remediation skipped: {remediation['skipped']}"
    would = "would " if remediation["dry_run"] else ""
    parts = [f"{would}taint {', '.join(remediation['tainted'])}" if remediation["tainted"] else "",
             f"{would}untaint {', '.join(remediation['untainted'])}" if remediation["untainted"] else "",
             f"{would}release {', '.join(remediation['released'])}" if remediation.get("released") else "",
             f"{len(remediation['unchanged'])} unchanged" if remediation["unchanged"] else "",
             (f"{'would mark' if would else 'marked'} {len(remediation['marks'])} node(s)" if remediation.get("marks")
              else ""),
             f"{len(remediation['errors'])} error(s)" if remediation["errors"] else ""]
    text = "; ".join(p for p in parts if p) or "no node with per-node results"
    return f"remediation{' (dry run)' if remediation['dry_run'] else ''} [{remediation['taint']}]: {text}"
