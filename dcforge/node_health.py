"""`dcforge accept --mark-nodes`: tell the cluster, in its own vocabulary, what node-level acceptance found
(docs/node-health.md).

For each node a check judged (its per-node rows, dcforge/report/nodes.py):
- the node condition `DcforgeNodeHealthy`: status True (passed) or False, a CamelCase reason naming the check
  (`SlowNodeFailed`, `AllChecksPassed`, `Released` when its validation gate was lifted), a one-line message with
  the findings, lastHeartbeatTime now and lastTransitionTime when the status last changed;
- the annotation `dcforge.io/recommended-action` with the node's most urgent action (dcforge.findings.Action);
- a Warning Event on the node (namespace `default`, where the kubelet records node events) for each check it
  failed.
A condition is written with a strategic-merge patch of nodes/status carrying only its own entry (the kubelet's
conditions are left as they are). The API access it needs, `NODE_HEALTH_API_ACCESS` and `NODE_EVENT_ACCESS`, is
granted only where the environment sets `dcforge:acceptance.allowNodeConditions: true`.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from dcforge.report.nodes import NodeJudgement

CONDITION = "DcforgeNodeHealthy"
ACTION_ANNOTATION = "dcforge.io/recommended-action"
EVENT_NAMESPACE = "default"
EVENT_SOURCE = "dcforge"
MESSAGE_LIMIT = 1024
"""Characters of a condition's or event's message (the API server's events are capped at 1 KiB as well)."""


def camel(check: str) -> str:
    """`slow_node` -> `SlowNode` (a reason is one CamelCase word)."""
    return "".join(part[:1].upper() + part[1:] for part in check.replace("-", "_").split("_"))


def one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 1] + "…"


def condition_for(judged: NodeJudgement, released: str = "") -> dict[str, str]:
    """The condition's status, reason and message (no times) for a node's judgement; `released` names the gate
    taint that was lifted, if any."""
    if judged.passed:
        checks = ", ".join(sorted(judged.checks))
        if released:
            return {"type": CONDITION, "status": "True", "reason": "Released",
                    "message": one_line(f"passed {checks}; released from {released}")}
        return {"type": CONDITION, "status": "True", "reason": "AllChecksPassed",
                "message": one_line(f"passed {checks}")}
    return {"type": CONDITION, "status": "False", "reason": f"{camel(judged.failed_check)}Failed",
            "message": one_line(f"recommended action {judged.action.value}: {'; '.join(judged.problems)}")}


def failed_checks(judged: NodeJudgement) -> dict[str, list[str]]:
    """Check -> its problems on this node (one Event each)."""
    by_check: dict[str, list[str]] = {}
    for problem in judged.problems:
        by_check.setdefault(problem.split(":", 1)[0], []).append(problem.split(": ", 1)[1])
    return by_check


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def mark(core, judged: NodeJudgement, dry_run: bool, released: str = "") -> str:
    """Set the node's condition and annotation and record its Events (or, dry, only say so); one line saying what.
    Raises the client's ApiException (the caller makes it one line naming the node)."""
    node = json.loads(core.read_node(judged.node, _preload_content=False).data)
    wanted = condition_for(judged, released)
    previous = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION), {})
    annotation = (node["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
    events = failed_checks(judged)
    summary = (f"{'would set' if dry_run else 'set'} {CONDITION}={wanted['status']} ({wanted['reason']}) on "
               f"{judged.node}: {wanted['message']}; {ACTION_ANNOTATION}={judged.action.value}"
               + (f"; {len(events)} event(s)" if events else ""))
    if dry_run:
        return summary
    now = _now()
    transition = previous.get("lastTransitionTime") if previous.get("status") == wanted["status"] else now
    core.patch_node_status(judged.node, {"status": {"conditions": [
        {**wanted, "lastHeartbeatTime": now, "lastTransitionTime": transition or now}]}}, _preload_content=False)
    if annotation != judged.action.value:
        core.patch_node(judged.node, {"metadata": {"annotations": {ACTION_ANNOTATION: judged.action.value}}},
                        _preload_content=False)
    for check, problems in events.items():
        core.create_namespaced_event(EVENT_NAMESPACE, event(node, check, problems, judged, now),
                                     _preload_content=False)
    return summary


def event(node: dict[str, Any], check: str, problems: list[str], judged: NodeJudgement, now: str) -> dict[str, Any]:
    """A Warning Event about the Node, as `kubectl describe node` lists them."""
    name = node["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.dcforge-{uuid.uuid4().hex[:10]}", "namespace": EVENT_NAMESPACE},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name,
                               "uid": node["metadata"].get("uid", "")},
            "type": "Warning", "reason": f"{camel(check)}Failed",
            "message": one_line(f"{'; '.join(problems)} (recommended action: {judged.action.value})"),
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}
