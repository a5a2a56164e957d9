"""The per-node table a check may put in `details.nodes`: one row per node, shown in the HTML report and as a
JUnit testcase per node.

A row is a JSON object with at least `host`; `state` (a node's process outcome: succeeded, failed, killed, ...),
`verdict` (`slow`, `suspect`, `cleared`, ...) and `outlier` (true when the node is more than the configured
fraction below the pool median; `outlier_in`, when present, lists the figures in which it is one) and
`problem` (a check's own reason the node failed, e.g. NCCL fell back to Socket where RDMA is declared)
decide whether the node passed, and so does `action` (dcforge.findings.Action: the node's recommended action): a node
whose action takes it out of service (reset GPU, reboot node, drain and service, contact vendor) did not pass even
where nothing else says so. Other keys are figures, shown as columns.
"""

from __future__ import annotations

from typing import Any

from dcforge.findings import Action

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
