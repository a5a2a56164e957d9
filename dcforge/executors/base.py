"""What a check asks an executor to run, and what every executor does with it (docs/executors.md).

A check describes its workload -- roles, command, environment, resources, node count, named ports, volumes by
purpose, readiness -- and never says *where* it runs. An executor places each node of each role somewhere (a
local process group, a process group on an SSH host, a pod of an Indexed Job) and hands back an `Execution`:
per-node status and logs, a results file reader, failure injection, and a stop that leaves nothing behind.

Commands and environment values are templates filled per node by the executor:

    {node_index}      this node's index within its role (0 .. nodes-1)
    {node_count}      the role's node count
    {node_address}    the address other nodes reach this node at
    {leader_address}  the address of node 0 of the role (the rendezvous host)
    {is_leader}       `true` on node 0 of the role, else `false` (torchrun's `is_host`)
    {port[NAME]}      the number the executor assigned to the role's named port NAME
    {volume[PURPOSE]} the path of the volume for PURPOSE (scratch, checkpoints, results, secrets) on this node
    {role_address[ROLE]}     the address the nodes of another role reach role ROLE at (a role with ports: its
                             node 0 locally and on hosts, its Service on Kubernetes)
    {role_port[ROLE][NAME]}  the number of role ROLE's named port NAME there
    {python}          the Python interpreter with dcforge and the workloads installed, on this node
    {workdir}         the directory the command runs in (the project root, where `workloads/` is)
"""

from __future__ import annotations

import enum
import socket
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


class VolumePurpose(str, enum.Enum):
    SCRATCH = "scratch"
    """Per-node temporary space, gone after the run (emptyDir on Kubernetes)."""
    CHECKPOINTS = "checkpoints"
    """Storage every node of the role shares and that outlives a node (the checkpoints storage class)."""
    RESULTS = "results"
    """Where the workload writes the JSON the check reads back through `Execution.read_result`."""
    SECRETS = "secrets"
    """Read-only files the check hands to the workload (`Workload.secrets`, e.g. an API key): a Secret on
    Kubernetes, a private 0700 folder of 0600 files locally (never under the report directory). Secret material
    never goes into a command line, an environment value or a log."""


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    memory_mib: int = 1024
    gpus: int = 0
    """GPUs per node (`nvidia.com/gpu` on Kubernetes; ignored by the local and hosts executors)."""


@dataclass(frozen=True)
class Readiness:
    """When a role counts as ready: a TCP port accepting connections, or a line in its log."""

    port: str | None = None
    """A named port of the role."""
    http_path: str | None = None
    """With `port`: ready when `GET http://<node>:<port><http_path>` answers 200 (an httpGet readinessProbe on
    Kubernetes), not merely when the port accepts connections -- a server that binds before its model is loaded."""
    log_line: str | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.http_path is not None and (self.port is None or not self.http_path.startswith("/")):
            raise ValueError(f"readiness http_path {self.http_path!r} needs a port and a leading '/'")


@dataclass(frozen=True)
class Role:
    name: str
    command: tuple[str, ...]
    """Program and arguments, each a template (see the module docstring)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment, values are templates; added to what the executor provides."""
    nodes: int = 1
    resources: Resources = field(default_factory=Resources)
    ports: tuple[str, ...] = ()
    """Named ports the role listens on; the executor assigns the numbers (free ports locally, fixed in pods)."""
    readiness: Readiness | None = None
    min_nodes: int | None = None
    """Elastic role (torchrun `--nnodes min:max`): the run goes on while at least this many of its nodes have not
    failed or been killed, so `wait` stops early only below it. None: every node is needed (the first loss ends
    the run)."""
    replacements: int = 0
    """How many times a node killed by `kill_node` is replaced by a new one that runs the command again (the
    workload resumes from its own checkpoints): a Job's backoffLimit on Kubernetes. Only the kubernetes executor
    replaces nodes; the others refuse a role that asks for it."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"role {self.name!r}: nodes must be >= 1, got {self.nodes}")
        if self.min_nodes is not None and not 1 <= self.min_nodes <= self.nodes:
            raise ValueError(f"role {self.name!r}: min_nodes must be between 1 and nodes {self.nodes}, "
                             f"got {self.min_nodes}")
        if not self.command:
            raise ValueError(f"role {self.name!r}: empty command")
        if self.replacements < 0:
            raise ValueError(f"role {self.name!r}: replacements must be >= 0, got {self.replacements}")


@dataclass(frozen=True)
class Workload:
    name: str
    roles: tuple[Role, ...]
    volumes: tuple[VolumePurpose, ...] = (VolumePurpose.SCRATCH, VolumePurpose.RESULTS)
    timeout_s: float = 600.0
    """Hard limit for `Execution.wait` when the caller gives none."""
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    """File name -> content of the `secrets` volume (needs VolumePurpose.SECRETS in `volumes`)."""
    checkpoint_class: str | None = None
    """The StorageClass (a name from dcforge:storage.classes) of the checkpoints volume on Kubernetes; default the
    spec's `purpose: checkpoints` class. The other executors use a folder (ignored there)."""
    checkpoint_size_gi: int | None = None
    """The size of that claim on Kubernetes; default 20 Gi."""

    def __post_init__(self) -> None:
        if self.secrets and VolumePurpose.SECRETS not in self.volumes:
            raise ValueError(f"workload {self.name!r} has secrets but no {VolumePurpose.SECRETS.value} volume")
        for name in self.secrets:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"workload {self.name!r}: secret file name {name!r} must be a plain file name")


class NodeState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    """Stopped by the executor: failure injection, a timeout or the end of the run."""

    @property
    def finished(self) -> bool:
        return self not in (NodeState.PENDING, NodeState.RUNNING)


@dataclass
class NodeStatus:
    """One node of one role: where it runs, how it is doing, where its log is."""

    role: str
    index: int
    host: str
    """Where the node runs: `local`, an inventory host name, a pod name."""
    address: str
    state: NodeState = NodeState.PENDING
    exit_code: int | None = None
    log_path: Path | None = None
    """This node's log on the machine running dcforge."""
    reason: str = ""
    kubernetes_node: str = ""
    """The Kubernetes node the pod was scheduled on (its `spec.nodeName`; kubernetes executor only): what
    `--taint-failed` taints, where `host` is the pod's name."""

    @property
    def node_id(self) -> str:
        return f"{self.role}/{self.index}"


@dataclass
class ExecutionOutcome:
    nodes: list[NodeStatus]
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        return not self.timed_out and all(node.state is NodeState.SUCCEEDED for node in self.nodes)

    def failure_summary(self) -> str:
        bad = [node for node in self.nodes if node.state is not NodeState.SUCCEEDED]
        parts = [f"{node.node_id} on {node.host}: {node.state.value}"
                 + (f" (exit {node.exit_code})" if node.exit_code is not None else "")
                 + (f": {node.reason}" if node.reason else "") for node in bad]
        prefix = "timed out; " if self.timed_out else ""
        return prefix + "; ".join(parts)


StatusCallback = Callable[[list[NodeStatus]], None]


class ExecutorError(RuntimeError):
    """The executor could not place or reach a node; the message is one line naming the node or host."""


def literal(text: str) -> str:
    """`text` as a command or environment template that means itself: its braces doubled (a JSON argument, a
    file-name pattern with `{pid}` that the workload fills, not the executor)."""
    return text.replace("{", "{{").replace("}", "}}")


@runtime_checkable
class Execution(Protocol):
    """A started workload. Use as a context manager: leaving it stops every node, whatever happened."""

    workload: Workload

    def statuses(self) -> list[NodeStatus]:
        """Current status of every node (also refreshes states of nodes that exited)."""
        ...

    def wait(self, timeout_s: float | None = None, on_status: StatusCallback | None = None,
             poll_s: float = 0.2, roles: Collection[str] | None = None) -> ExecutionOutcome:
        """Block until every node finished, or the timeout (then every node is killed and `timed_out` set).
        `on_status` is called with all statuses whenever one changes. Stops early when any node fails, unless
        its role is elastic (`Role.min_nodes`) and enough of its nodes remain. `roles`: only the nodes of these
        roles need to finish (a load generator's, while the server it loads runs until `stop`)."""
        ...

    def wait_ready(self, role: str) -> None:
        """Block until every node of `role` meets the role's readiness (a named port accepting connections at
        the node's address, or a line in its log), within readiness.timeout_s; ExecutorError naming the node
        when it exits first or the time runs out. A role without readiness is ready at once."""
        ...

    def kill_node(self, role: str, index: int) -> None:
        """Failure injection: SIGKILL every process of one node, at once, without grace."""
        ...

    def isolate_node(self, role: str, index: int, restore_after_s: float) -> None:
        """Failure injection: the node leaves the network -- every process of it killed at once (`kill_node`),
        then its link taken down, brought back up after `restore_after_s` where the executor can (a real host must
        come back). hosts: the interface holding the host's address, on the host itself; Kubernetes: deleting
        the pod (its network namespace goes with it); local: the processes only (loopback is this machine's)."""
        ...

    def read_result(self, role: str, index: int, name: str) -> bytes:
        """The file `name` that the node wrote under its results volume."""
        ...

    def read_log(self, role: str, index: int) -> str:
        """The node's log so far (on Kubernetes: its current pod's), "" before it has one: what a check watches
        for a line the workload prints while it runs."""
        ...

    def read_shared(self, name: str) -> bytes:
        """The file `name` under the shared `checkpoints` volume (which every node sees alike), read through a
        node that was not isolated; ExecutorError when it cannot be read."""
        ...

    def stop(self) -> None:
        """Terminate every node (SIGTERM, then SIGKILL after the grace period) and release connections.
        Idempotent; called on pass, fail, timeout and interrupt alike."""
        ...

    def __enter__(self) -> "Execution": ...

    def __exit__(self, *exc_info) -> None: ...


@runtime_checkable
class Executor(Protocol):
    name: str

    def start(self, workload: Workload, run_dir: Path) -> Execution:
        """Place and start every node of every role; logs go under `run_dir`. Raises ExecutorError (one line,
        naming the host) when a node cannot be placed or reached."""
        ...


@runtime_checkable
class PoolMachines(Protocol):
    """Optional capability of an executor that places nodes on the named machines of a pool (the kubernetes
    executor; a Slurm executor would be the next), as kueue's jobframework has optional interfaces beside its
    generic one. Placement asks for it once (`pool_machines`), never probes attributes one by one."""

    @property
    def node_resources(self) -> Resources:
        """What each node asks for: a whole machine of the pool (its GPUs, a share of its CPUs and memory)."""
        ...

    @property
    def nodes(self) -> tuple[str, ...]:
        """The machines the workloads are pinned to, by name; empty when not pinned."""
        ...

    def pool_nodes(self) -> list[str]:
        """The pool's machines that can take a node now, by name."""
        ...

    def pinned(self, nodes: Sequence[str]) -> "PoolMachines":
        """The same executor with every role on exactly `nodes`, one node on each."""
        ...

    def tolerating(self, tolerations: Sequence[dict[str, str]]) -> "PoolMachines":
        """The same executor whose nodes also go to machines with these taints."""
        ...


def pool_machines(executor: object) -> PoolMachines | None:
    """`executor` as a placer on a pool's machines, or None where it places nodes otherwise (local, hosts)."""
    return executor if isinstance(executor, PoolMachines) else None


@dataclass(frozen=True)
class Placement:
    """Where one node runs, as the template fields see it."""

    role: Role
    index: int
    host: str
    address: str
    leader_address: str
    ports: Mapping[str, int]
    volumes: Mapping[str, str]
    python: str
    workdir: str
    role_addresses: Mapping[str, str] = field(default_factory=dict)
    """Role name -> the address its node 0 is reached at (`{role_address[ROLE]}`), for every role with ports."""
    role_ports: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Role name -> its named ports (`{role_port[ROLE][NAME]}`)."""

    def fields(self) -> dict[str, object]:
        return {"node_index": self.index, "node_count": self.role.nodes, "node_address": self.address,
                "leader_address": self.leader_address, "is_leader": "true" if self.index == 0 else "false",
                "port": dict(self.ports), "volume": dict(self.volumes),
                "role_address": dict(self.role_addresses),
                "role_port": {role: dict(ports) for role, ports in self.role_ports.items()},
                "python": self.python, "workdir": self.workdir}

    def command(self) -> list[str]:
        return [part.format(**self.fields()) for part in self.role.command]

    def env(self) -> dict[str, str]:
        return {key: value.format(**self.fields()) for key, value in self.role.env.items()}


class PlacedExecution:
    """What the process-based executions share: nodes found by role and index, and the common wait loops.

    A subclass sets `workload`, `_placements` and `_statuses` (one per node, same order) and implements
    `statuses`, `_terminate_all`, `kill_node`, `read_result` and `stop`.
    """

    workload: Workload
    _placements: list[Placement]
    _statuses: list[NodeStatus]

    def statuses(self) -> list[NodeStatus]:
        raise NotImplementedError

    def _terminate_all(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def wait(self, timeout_s: float | None = None, on_status: StatusCallback | None = None,
             poll_s: float = 0.2, roles: Collection[str] | None = None) -> ExecutionOutcome:
        return wait_loop(self, timeout_s if timeout_s is not None else self.workload.timeout_s, on_status, poll_s,
                         self._terminate_all, roles)

    def wait_ready(self, role: str) -> None:
        wait_ready_loop(self, self._placements, role)

    def read_log(self, role: str, index: int) -> str:
        log_path = self._statuses[self._position(role, index)].log_path
        try:
            return log_path.read_text(errors="replace") if log_path is not None else ""
        except FileNotFoundError:
            return ""

    def _position(self, role: str, index: int) -> int:
        for position, status in enumerate(self._statuses):
            if status.role == role and status.index == index:
                return position
        raise KeyError(f"workload {self.workload.name!r} has no node {role}/{index}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def refuse_replacements(workload: Workload, executor: str) -> None:
    """ExecutorError (one line) for a role that asks for node replacements, which only Kubernetes provides."""
    for role in workload.roles:
        if role.replacements:
            raise ExecutorError(f"role {role.name!r} asks for {role.replacements} replacement(s) of a lost node, "
                                f"which the {executor} executor cannot provide (a Kubernetes Job's backoffLimit)")


def wait_loop(execution: Execution, timeout_s: float, on_status: StatusCallback | None, poll_s: float,
              kill_all: Callable[[], None], roles: Collection[str] | None = None) -> ExecutionOutcome:
    """The wait every executor shares: poll statuses, report changes, stop at the first failure or timeout; done
    when every node (of `roles`, when given) has finished."""
    if roles is not None and (unknown := set(roles) - {role.name for role in execution.workload.roles}):
        raise KeyError(f"workload {execution.workload.name!r} has no role {sorted(unknown)[0]!r}")
    deadline = time.monotonic() + timeout_s
    last: list[tuple[str, NodeState, str]] | None = None
    while True:
        statuses = execution.statuses()
        # the reason too: the live view shows why a pending pod waits (ContainerCreating, Unschedulable)
        snapshot = [(status.node_id, status.state, status.reason) for status in statuses]
        if on_status is not None and snapshot != last:
            on_status(statuses)
        last = snapshot
        if all(status.state.finished for status in statuses if roles is None or status.role in roles):
            return ExecutionOutcome(statuses)
        if too_few_left(execution.workload, statuses):
            kill_all()  # one failed rank leaves the others blocked in a collective until their own timeout
            return ExecutionOutcome(execution.statuses())
        if time.monotonic() >= deadline:
            kill_all()
            return ExecutionOutcome(execution.statuses(), timed_out=True)
        time.sleep(poll_s)


def too_few_left(workload: Workload, statuses: list[NodeStatus]) -> bool:
    """Whether a role lost more nodes (failed or killed) than it tolerates: any, unless it is elastic."""
    lost: dict[str, int] = {}
    for status in statuses:
        if status.state in (NodeState.FAILED, NodeState.KILLED):
            lost[status.role] = lost.get(status.role, 0) + 1
    for role in workload.roles:
        tolerated = role.nodes - (role.min_nodes or role.nodes)
        if lost.get(role.name, 0) > tolerated:
            return True
    return False


def wait_ready_loop(execution: Execution, placements: list[Placement], role: str, poll_s: float = 0.1) -> None:
    """The readiness wait every executor shares: poll each node of `role` until its readiness holds."""
    mine = [p for p in placements if p.role.name == role]
    if not mine:
        raise KeyError(f"workload {execution.workload.name!r} has no role {role!r}")
    readiness = mine[0].role.readiness
    if readiness is None:
        return
    deadline = time.monotonic() + readiness.timeout_s
    pending = list(mine)
    while pending:
        statuses = {(s.role, s.index): s for s in execution.statuses()}
        for placement in list(pending):
            status = statuses[(role, placement.index)]
            if status.state.finished:
                raise ExecutorError(f"{status.node_id} on {status.host} exited ({status.state.value}, exit "
                                    f"{status.exit_code}) before it was ready")
            if _is_ready(readiness, placement, status):
                pending.remove(placement)
        if pending and time.monotonic() >= deadline:
            node = pending[0]
            what = f"port {readiness.port}" if readiness.port else f"log line {readiness.log_line!r}"
            raise ExecutorError(f"{role}/{node.index} on {node.host} not ready ({what}) within "
                                f"{readiness.timeout_s:g} s")
        if pending:
            time.sleep(poll_s)


def wait_for_log_line(execution: Execution, role: str, text: str, give_up: Callable[[], bool],
                      poll_s: float = 0.2) -> str | None:
    """The first line holding `text` in the log of a node of `role`, read through `read_log` every `poll_s`: what a
    check waits for before it strikes (a workload saying it holds, or asking for its fault). None when a node of
    the role has finished, or `give_up()` is true, first."""
    while not give_up():
        nodes = [status for status in execution.statuses() if status.role == role]
        if any(node.state.finished for node in nodes):
            return None
        for node in nodes:
            found = next((line for line in execution.read_log(role, node.index).splitlines() if text in line), None)
            if found is not None:
                return found
        time.sleep(poll_s)
    return None


def _is_ready(readiness: Readiness, placement: Placement, status: NodeStatus) -> bool:
    if readiness.port is not None and readiness.http_path is not None:
        import http.client
        import urllib.request

        url = f"http://{placement.address}:{placement.ports[readiness.port]}{readiness.http_path}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return response.status == 200
        except (OSError, http.client.HTTPException):  # refused, reset, an error status (HTTPError), garbage
            return False
    if readiness.port is not None:
        try:
            with socket.create_connection((placement.address, placement.ports[readiness.port]), timeout=1.0):
                return True
        except OSError:
            return False
    if readiness.log_line is not None and status.log_path is not None:
        try:
            return readiness.log_line in status.log_path.read_text(errors="replace")
        except OSError:
            return False
    return True
