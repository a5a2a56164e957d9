"""The `local` executor: every node is a ManagedProcess (its own process group) on this machine."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from dcforge.executors.base import (ExecutorError, NodeState, NodeStatus, PlacedExecution, Placement, VolumePurpose,
                                    Workload, refuse_replacements)
from dcforge.harness.processes import ManagedProcess

LOOPBACK = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""Where `workloads/` lives; every executor runs commands from the project root by default."""


def free_port(address: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def volume_paths(run_dir: Path, workload: Workload, node_dir: str, secrets_dir: Path | None) -> dict[str, str]:
    """Per-node scratch and results, one checkpoints folder the whole run shares, the run's secrets folder."""
    paths = {}
    for purpose in workload.volumes:
        if purpose is VolumePurpose.SECRETS:
            assert secrets_dir is not None
            paths[purpose.value] = str(secrets_dir)
            continue
        path = run_dir / (purpose.value if purpose is VolumePurpose.CHECKPOINTS else f"{node_dir}/{purpose.value}")
        path.mkdir(parents=True, exist_ok=True)
        paths[purpose.value] = str(path)
    return paths


def write_secrets(workload: Workload) -> Path | None:
    """The workload's secret files in a fresh 0700 folder outside the run directory (which the report keeps), each
    0600; None when the workload has no secrets volume. The execution removes it when it stops."""
    if VolumePurpose.SECRETS not in workload.volumes:
        return None
    folder = Path(tempfile.mkdtemp(prefix="dcforge-secrets-"))
    os.chmod(folder, 0o700)
    for name, content in workload.secrets.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
    return folder


class LocalExecution(PlacedExecution):
    def __init__(self, workload: Workload, placements: list[Placement], run_dir: Path, grace_s: float,
                 secrets_dir: Path | None = None):
        self.workload = workload
        self._secrets_dir = secrets_dir
        self.run_dir = run_dir
        self._placements = placements
        self._processes: list[ManagedProcess] = []
        self._statuses = [NodeStatus(p.role.name, p.index, p.host, p.address,
                                     log_path=run_dir / f"{p.role.name}-{p.index}.log") for p in placements]
        self._killed: set[int] = set()
        self._grace_s = grace_s

    def start(self) -> "LocalExecution":
        try:
            for placement, status in zip(self._placements, self._statuses):
                process = ManagedProcess(placement.command(), env={**os.environ, **placement.env()},
                                         cwd=placement.workdir, log_path=status.log_path, grace_s=self._grace_s)
                self._processes.append(process.start())
                status.state = NodeState.RUNNING
        except BaseException:
            self.stop()
            raise
        return self

    def statuses(self) -> list[NodeStatus]:
        for position, (process, status) in enumerate(zip(self._processes, self._statuses)):
            code = process.poll()
            if code is not None and not status.state.finished:
                status.exit_code = code
                status.state = (NodeState.KILLED if position in self._killed
                                else NodeState.SUCCEEDED if code == 0 else NodeState.FAILED)
        return list(self._statuses)

    def kill_node(self, role: str, index: int) -> None:
        position = self._position(role, index)
        self._killed.add(position)
        process = self._processes[position]
        if process.poll() is None:
            kill_tree(process_tree(process.pid))

    def isolate_node(self, role: str, index: int, restore_after_s: float) -> None:
        """The node's processes only: every node shares this machine's loopback, there is no link of its own."""
        self.kill_node(role, index)

    def read_result(self, role: str, index: int, name: str) -> bytes:
        placement = self._placements[self._position(role, index)]
        return (Path(placement.volumes[VolumePurpose.RESULTS.value]) / name).read_bytes()

    def read_shared(self, name: str) -> bytes:
        path = Path(self._placements[0].volumes[VolumePurpose.CHECKPOINTS.value]) / name
        try:
            return path.read_bytes()
        except OSError as error:
            raise ExecutorError(f"cannot read {path}: {error.strerror or error}") from None

    def _terminate_all(self) -> None:
        trees = []
        for position, process in enumerate(self._processes):
            if process.poll() is None:
                self._killed.add(position)
                trees.append(process_tree(process.pid))
        for process in self._processes:
            process.stop()  # SIGTERM to the group first: torchrun stops its workers itself
        for tree in trees:  # then whatever escaped the group (workers in sessions of their own)
            kill_tree(tree[1:])

    def stop(self) -> None:
        self._terminate_all()
        self.statuses()
        if self._secrets_dir is not None:
            shutil.rmtree(self._secrets_dir, ignore_errors=True)



def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, parents first. torchrun starts each worker in a session of its own, so a
    node's processes are a tree, not one process group."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop(0)
        tree.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in children.read_text().split())
            except OSError:
                pass
    return tree


def kill_tree(pids: list[int]) -> None:
    """SIGKILL each process and the group it leads (parents first, so none can restart a child)."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class LocalExecutor:
    """Runs every node on this machine; `{node_address}` and `{leader_address}` are loopback."""

    name = "local"

    def __init__(self, grace_s: float = 5.0):
        self.grace_s = grace_s

    def start(self, workload: Workload, run_dir: Path) -> LocalExecution:
        refuse_replacements(workload, self.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        role_ports = {role.name: {name: free_port() for name in role.ports} for role in workload.roles}
        role_addresses = {role.name: LOOPBACK for role in workload.roles if role.ports}
        secrets_dir = write_secrets(workload)
        placements = []
        for role in workload.roles:
            for index in range(role.nodes):
                placements.append(Placement(role, index, "local", LOOPBACK, LOOPBACK, role_ports[role.name],
                                            volume_paths(run_dir, workload, f"{role.name}-{index}", secrets_dir),
                                            sys.executable, str(PROJECT_ROOT), role_addresses, role_ports))
        return LocalExecution(workload, placements, run_dir, self.grace_s, secrets_dir).start()
