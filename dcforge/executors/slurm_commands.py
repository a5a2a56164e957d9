"""The Slurm client commands dcforge runs (sinfo, squeue, scontrol, scancel), each bounded in time, and what it
reads from their output. The environment they run with is the caller's (SLURM_CONF, when set, names the cluster's
slurm.conf). Output is asked for in fixed `-o` formats with `|` between fields, never parsed from the human
default; `scontrol show node -o` (one line per node, `Key=Value` pairs) is read for a node's state and reason.

Every job dcforge submits carries `run_comment(env, run_id)` as its Slurm comment and the run id in its name, so
the jobs of one run (Ctrl-C) and of one environment (`dcforge clean --env X`) can be found and cancelled, and no
other job ever is.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from dcforge.executors.base import ExecutorError

COMMENT_PREFIX = "dcforge env="
COMMAND_TIMEOUT_S = 30.0


def run_comment(env_name: str, run_id: str) -> str:
    """The Slurm comment of every job of one run of one environment."""
    return f"{COMMENT_PREFIX}{env_name} run={run_id}"


@dataclass(frozen=True)
class SlurmNode:
    name: str
    address: str
    state: str
    """sinfo's long state (idle, mixed, allocated, drained, draining, down*, ...)."""

    @property
    def usable(self) -> bool:
        """Whether a job can be placed on it now or soon (not drained, down, failing or unreachable)."""
        return not any(word in self.state for word in ("drain", "down", "fail", "maint", "inval", "*"))


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    name: str
    state: str
    """squeue's long state: PENDING, RUNNING, COMPLETING, ..."""
    reason: str
    """Why it waits (Resources, Priority, PartitionDown, ReqNodeNotAvail, ...), `None` when it does not."""
    comment: str


def slurm(args: list[str], env: Mapping[str, str] | None = None, timeout_s: float = COMMAND_TIMEOUT_S,
          check: bool = True) -> subprocess.CompletedProcess:
    """A Slurm client command; ExecutorError (one line naming the command) when it is missing, hangs or fails."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ExecutorError(f"{args[0]} not found: target slurm runs the Slurm client commands on this machine "
                            "(Debian/Ubuntu: slurm-client)") from None
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"{' '.join(args[:2])}: no answer from slurmctld within {timeout_s:.0f} s") from None
    if check and done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise ExecutorError(f"{' '.join(args[:3])}: {detail}")
    return done


SINFO_FORMAT = "%N|%o|%T"
SQUEUE_FORMAT = "%i|%j|%T|%r|%k"


def parse_sinfo(text: str) -> list[SlurmNode]:
    """`sinfo -h -N -o SINFO_FORMAT` lines, in name order, each node once."""
    nodes = {}
    for line in text.splitlines():
        if line.strip():
            name, address, state = line.strip().split("|", 2)
            nodes[name] = SlurmNode(name, address, state.lower())
    return [nodes[name] for name in sorted(nodes)]


def parse_squeue(text: str) -> list[SlurmJob]:
    """`squeue -h -o SQUEUE_FORMAT` lines (the comment last: it may hold anything, `|` included)."""
    found = []
    for line in text.splitlines():
        if line.strip():
            job_id, job_name, state, reason, comment = line.strip().split("|", 4)
            found.append(SlurmJob(job_id, job_name, state, reason, comment))
    return found


def partition_nodes(partition: str, env: Mapping[str, str] | None = None) -> list[SlurmNode]:
    """The nodes of `partition` in name order, with their addresses (NodeAddr) and states."""
    nodes = parse_sinfo(slurm(["sinfo", "-h", "-N", "-p", partition, "-o", SINFO_FORMAT], env).stdout)
    if not nodes:
        raise ExecutorError(f"Slurm partition {partition!r} has no nodes (or does not exist: sinfo -p {partition})")
    return nodes


def jobs(env: Mapping[str, str] | None = None, name: str | None = None) -> list[SlurmJob]:
    """Every queued or running job (of this user, as squeue shows them), or those named `name` (a comma list)."""
    return parse_squeue(slurm(["squeue", "-h", "-o", SQUEUE_FORMAT] + (["-n", name] if name else []), env).stdout)


def cancel_jobs(comment_prefix: str, env: Mapping[str, str] | None = None) -> list[SlurmJob]:
    """scancel every job whose comment starts with `comment_prefix` (one run, or one environment); the jobs."""
    mine = [job for job in jobs(env) if job.comment.startswith(comment_prefix)]
    if mine:
        slurm(["scancel", *[job.job_id for job in mine]], env, check=False)
    return mine


KEY_VALUE = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|$)")


def parse_node(text: str) -> dict[str, str]:
    """One `scontrol show node -o` line as a dict: State (IDLE+DRAIN, ...), Reason (`text [user@time]`), NodeAddr...
    Reason comes last and is free text (`...; action=drain_and_service` looks like a key): everything after it."""
    fields, _, reason = text.strip().partition(" Reason=")
    details = {key: value.strip() for key, value in KEY_VALUE.findall(fields)}
    return {**details, "Reason": reason.strip()} if reason else details


def node_details(node: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    return parse_node(slurm(["scontrol", "show", "node", "-o", node], env).stdout)


def drain_reason(details: Mapping[str, str]) -> str | None:
    """The reason a drained (or draining) node was given, without scontrol's `[user@time]` suffix; None when the
    node is not drained."""
    if "DRAIN" not in details.get("State", ""):
        return None
    return re.sub(r"\s*\[[^\]]*@[^\]]*\]$", "", details.get("Reason", "")).strip()


def drain(node: str, reason: str, env: Mapping[str, str] | None = None) -> None:
    slurm(["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"], env)


def resume(node: str, env: Mapping[str, str] | None = None) -> None:
    slurm(["scontrol", "update", f"NodeName={node}", "State=RESUME"], env)
