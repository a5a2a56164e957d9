"""The `slurm` executor: every role is one Slurm job (`srun -N n -w NODES`), one task per node (docs/slurm.md).

Node i of each role runs on the i-th node the executor was given (`pinned`) or, by default, the i-th usable node of
the partition in name order, so node i is a named machine as a host is on target hosts; multi-node roles (torchrun
across nodes) are one allocation, node 0 hosting the rendezvous, every node reached at its NodeAddr. A role's job
is named `dcforge-<run id>-<workload>-<role>` and carries the comment `dcforge env=<env> run=<run id>`
(`slurm_commands.run_comment`), so Ctrl-C and `dcforge clean` cancel exactly the jobs of a run or environment.

Files: the nodes and this machine share `shared_dir` (a site's NFS or Lustre home; the test bed's namespaces share
one filesystem). Under `<shared_dir>/dcforge-runs/<run id>/<execution key>/` each node has its volumes, its log, a
`started` file written when its command starts and an `exit` file with its exit status: what the node states come
from. Slurm's own process tracking ends every process of a job on `scancel`; `stop()` cancels the
execution's jobs, waits for the srun clients, copies the logs into the run directory and removes the shared folder.

States: PENDING with squeue's reason (`job 42 pending: Resources`) until the node's command started, past
`pending_limit_s` the job is cancelled and its nodes fail with that reason in one line; RUNNING; SUCCEEDED or
FAILED from the `exit` file; a node that ends without one (its slurmd died, the job was cancelled) FAILED with
srun's last error line naming it (`srun: error: Node failure on node2`).
"""

from __future__ import annotations

import math
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dcforge.executors.base import (ExecutorError, NodeState, NodeStatus, PlacedExecution, Placement, Resources,
                                    Role, VolumePurpose, Workload, exit_state, refuse_replacements)
from dcforge.executors.hosts import EXIT_SETUP_FAILED, kill_tree_script, link_down_script
from dcforge.executors.local import PROJECT_ROOT
from dcforge.executors.slurm_commands import SlurmNode, jobs, partition_nodes, run_comment, slurm
from dcforge.harness.processes import RUNNING, _child_setup, signals_deferred

PORT_RANGE = (20000, 30000)
"""Named ports are drawn from here (no node can be asked for a free port before the job runs on it)."""
SQUEUE_EVERY_S = 1.0


@dataclass(frozen=True)
class SlurmOptions:
    partition: str
    shared_dir: Path
    """A folder this machine and every node see at the same path."""
    account: str | None = None
    qos: str | None = None
    time_limit_min: int | None = None
    """Each job's time limit; default the workload's timeout rounded up to minutes, plus one."""
    pending_limit_s: float = 300.0
    python: str = sys.executable
    workdir: str = str(PROJECT_ROOT)
    grace_s: float = 10.0
    """How long stop() waits for the srun clients after scancel."""
    slurm_conf: str | None = None
    """SLURM_CONF for the client commands; None: Slurm's default."""

    def client_env(self) -> dict[str, str] | None:
        """The environment of every Slurm command (None: this process's own)."""
        return {**os.environ, "SLURM_CONF": self.slurm_conf} if self.slurm_conf else None


def node_script(placement: Placement, node_dir: str) -> str:
    """What one node runs (POSIX sh): its volumes, `started`, the command in a session of its own (its pid kept
    for `kill_node`), the exit status into `exit`."""
    q = shlex.quote
    env = " ".join(q(f"{key}={value}") for key, value in placement.env().items())
    command = " ".join(q(part) for part in placement.command())
    volumes = " ".join(q(path) for path in placement.volumes.values())
    return "\n".join([
        f"exec >> {q(node_dir)}/node.log 2>&1",
        f"mkdir -p {volumes} || {{ echo {EXIT_SETUP_FAILED} > {q(node_dir)}/exit; exit {EXIT_SETUP_FAILED}; }}",
        f"cd {q(placement.workdir)} || {{ echo {EXIT_SETUP_FAILED} > {q(node_dir)}/exit; exit {EXIT_SETUP_FAILED}; }}",
        f": > {q(node_dir)}/started",
        f"env {env} setsid {command} </dev/null 2>&1 &",
        "pid=$!",
        f"echo $pid > {q(node_dir)}/pgid",
        "wait $pid; code=$?",
        f"echo $code > {q(node_dir)}/exit",
        "exit $code",
    ])


def role_script(placements: list[Placement], node_dirs: list[str]) -> str:
    """The one script every task of a role's job runs: the node's own part, chosen by the Slurm node name."""
    cases = [f"{shlex.quote(p.host)})\n{node_script(p, d)}\n;;" for p, d in zip(placements, node_dirs)]
    return "\n".join(['case "$SLURMD_NODENAME" in', *cases,
                      f'*) echo "dcforge: no part for node $SLURMD_NODENAME" >&2; exit {EXIT_SETUP_FAILED};;',
                      "esac", ""])


class SlurmExecution(PlacedExecution):
    def __init__(self, workload: Workload, placements: list[Placement], options: SlurmOptions, run_dir: Path,
                 base: Path, job_names: dict[str, str], comment: str):
        self.workload = workload
        self.run_dir = run_dir
        self.options = options
        self._env = options.client_env()
        self._placements = placements
        self._base = base
        self._job_names = job_names
        self._comment = comment
        self._node_dirs = [base / f"{p.role.name}-{p.index}" for p in placements]
        self._statuses = [NodeStatus(p.role.name, p.index, p.host, p.address,
                                     log_path=base / f"{p.role.name}-{p.index}" / "node.log")
                          for p in placements]
        self._sruns: dict[str, subprocess.Popen] = {}
        self._killed: set[int] = set()
        self._job_ids: dict[str, str] = {}
        self._srun_seen: dict[str, tuple[int, list[str]]] = {}
        self._pending_since = time.monotonic()
        self._last_squeue = 0.0
        self._stopped = False

    # --- start -----------------------------------------------------------------------------------------------
    def start(self) -> "SlurmExecution":
        RUNNING.add(self)
        try:
            for role in self.workload.roles:
                self._submit(role)
            self._pending_since = time.monotonic()
        except BaseException:
            self.stop()
            raise
        return self

    def _submit(self, role: Role) -> None:
        mine = [i for i, p in enumerate(self._placements) if p.role.name == role.name]
        for i in mine:
            self._node_dirs[i].mkdir(parents=True, exist_ok=True)
        script = self._base / f"{role.name}.sh"
        script.write_text(role_script([self._placements[i] for i in mine], [str(self._node_dirs[i]) for i in mine]))
        nodes = ",".join(self._placements[i].host for i in mine)
        options = self.options
        limit = options.time_limit_min or math.ceil(self.workload.timeout_s / 60) + 1
        args = ["srun", f"--job-name={self._job_names[role.name]}", f"--comment={self._comment}",
                f"--partition={options.partition}", f"--time={limit}", f"--nodes={role.nodes}",
                f"--nodelist={nodes}", "--ntasks-per-node=1",
                f"--cpus-per-task={max(1, math.ceil(role.resources.cpus))}",
                "--kill-on-bad-exit=0", "--input=none"]
        args += [f"--account={options.account}"] if options.account else []
        args += [f"--qos={options.qos}"] if options.qos else []
        # a GPU role takes whole machines, as a pool's node is on Kubernetes: the figures are the node's
        args += [f"--gpus-per-node={role.resources.gpus}", "--exclusive"] if role.resources.gpus else []
        args += ["--no-kill"] if role.min_nodes is not None else []  # an elastic role goes on without a lost node
        log = open(self.run_dir / f"{role.name}.srun.log", "ab")
        try:
            with signals_deferred():
                self._sruns[role.name] = subprocess.Popen([*args, "sh", str(script)], stdin=subprocess.DEVNULL,
                                                          stdout=log, stderr=subprocess.STDOUT, env=self._env,
                                                          start_new_session=True, preexec_fn=_child_setup(os.getpid()))
        finally:
            log.close()

    # --- state -------------------------------------------------------------------------------------------------
    def statuses(self) -> list[NodeStatus]:
        pending = False
        for position, (status, node_dir) in enumerate(zip(self._statuses, self._node_dirs)):
            if status.state.finished:
                continue
            exit_file = node_dir / "exit"
            if exit_file.exists() and (code := _read_int(exit_file)) is not None:
                self._finish(position, code, "")
            elif self._sruns.get(status.role) is not None and self._sruns[status.role].poll() is not None:
                self._finish(position, None, self._srun_reason(status))
            elif lost := self._node_failure(status):  # srun waits for the lost node's step to end: never
                self._finish(position, None, lost)
            elif (node_dir / "started").exists():
                status.state, status.reason = NodeState.RUNNING, ""
            else:
                pending = True
        if pending:
            self._pending_reasons()
        return list(self._statuses)

    def _finish(self, position: int, code: int | None, reason: str) -> None:
        status = self._statuses[position]
        status.exit_code = code
        status.state = exit_state(position in self._killed, code)
        if status.state is NodeState.FAILED:
            status.reason = reason or ("could not prepare the volumes or enter the workdir"
                                       if code == EXIT_SETUP_FAILED else "")

    def _srun_errors(self, role: str) -> list[str]:
        """srun's error lines so far (`srun: error: Node failure on node2`), read again only when its log grew."""
        path = self.run_dir / f"{role}.srun.log"
        try:
            size = path.stat().st_size
            if self._srun_seen.get(role, (-1, []))[0] != size:
                lines = path.read_text(errors="replace").splitlines()
                self._srun_seen[role] = (size, [line.strip() for line in lines if "error" in line.lower()])
        except OSError:
            return []
        return self._srun_seen[role][1]

    def _node_failure(self, status: NodeStatus) -> str:
        """srun's `Node failure on NODE` for this node (slurmctld found it not responding), or ''."""
        line = next((line for line in self._srun_errors(status.role) if f"Node failure on {status.host}" in line), "")
        return f"job {self._job_ids.get(status.role) or self._job_names[status.role]}: {line}" if line else ""

    def _srun_reason(self, status: NodeStatus) -> str:
        """srun's error line naming this node, else its last error line, else its exit status."""
        errors = self._srun_errors(status.role)
        named = [line for line in errors if status.host in line]
        job = self._job_ids.get(status.role) or self._job_names[status.role]
        code = self._sruns[status.role].returncode
        line = (named or errors or [f"srun exited with {code}"])[-1]
        return f"job {job} on {status.host} ended before the node's command did: {line}"

    def _pending_reasons(self) -> None:
        """squeue's reason on every node still waiting to start (at most once a second); past the pending limit
        the job is cancelled and its waiting nodes fail with the reason."""
        now = time.monotonic()
        if now - self._last_squeue < SQUEUE_EVERY_S:
            return
        self._last_squeue = now
        queued = {job.name: job for job in jobs(self._env, name=",".join(self._job_names.values()))}
        for position, status in enumerate(self._statuses):
            job = queued.get(self._job_names[status.role])
            if status.state is not NodeState.PENDING or job is None:
                continue
            self._job_ids[status.role] = job.job_id
            if job.state == "PENDING":
                status.reason = f"job {job.job_id} pending: {job.reason}"
                if now - self._pending_since > self.options.pending_limit_s:
                    slurm(["scancel", job.job_id], self._env, check=False)
                    status.state, status.reason = NodeState.FAILED, (
                        f"job {job.job_id} ({job.name}) still pending after {self.options.pending_limit_s:g} s: "
                        f"{job.reason}")
            else:
                status.reason = f"job {job.job_id} {'allocated' if job.state == 'RUNNING' else job.state.lower()}"

    # --- failure injection ---------------------------------------------------------------------------------
    def _on_node(self, position: int, script: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        """A step inside the role's job on that node, beside the running one (`--overlap`)."""
        status = self._statuses[position]
        job = self._job_ids.get(status.role) or self._job_id(status.role)
        return slurm(["srun", f"--jobid={job}", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={status.host}",
                      "sh", "-c", script], self._env, timeout_s=timeout_s, check=False)

    def _job_id(self, role: str) -> str:
        found = jobs(self._env, name=self._job_names[role])
        if not found:
            raise ExecutorError(f"job {self._job_names[role]} is not in squeue")
        self._job_ids[role] = found[0].job_id
        return found[0].job_id

    def kill_node(self, role: str, index: int) -> None:
        position = self._position(role, index)
        self._killed.add(position)
        self._on_node(position, kill_tree_script(str(self._node_dirs[position] / "pgid")))

    def isolate_node(self, role: str, index: int, restore_after_s: float) -> None:
        position = self._position(role, index)
        self.kill_node(role, index)
        done = self._on_node(position, link_down_script(self._statuses[position].address, restore_after_s))
        if done.returncode != 0:
            raise ExecutorError(f"node {self._statuses[position].host}: cannot take its link down: "
                                f"{done.stderr.strip() or 'exit ' + str(done.returncode)}")

    # --- files ---------------------------------------------------------------------------------------------
    def read_result(self, role: str, index: int, name: str) -> bytes:
        placement = self._placements[self._position(role, index)]
        return self._read(Path(placement.volumes[VolumePurpose.RESULTS.value]) / name)

    def read_shared(self, name: str) -> bytes:
        return self._read(Path(self._placements[0].volumes[VolumePurpose.CHECKPOINTS.value]) / name)

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            raise ExecutorError(f"cannot read {path}: {error.strerror}") from None

    # --- stop ----------------------------------------------------------------------------------------------
    def _terminate_all(self) -> None:
        """scancel the execution's jobs, SIGTERM the srun clients (an srun still waiting for its allocation
        withdraws the request), SIGKILL what is left after the grace period, and cancel again whatever job
        appeared in between."""
        running = [i for i, s in enumerate(self._statuses) if not s.state.finished]
        self._killed.update(running)
        self._cancel()
        for srun in self._sruns.values():
            if srun.poll() is None:
                srun.terminate()
        deadline = time.monotonic() + self.options.grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in self._sruns.values()):
            time.sleep(0.1)
        for srun in self._sruns.values():
            if srun.poll() is None:
                srun.kill()
                srun.wait(timeout=10)
        self._cancel()

    def _cancel(self) -> None:
        try:
            ids = [job.job_id for job in jobs(self._env, name=",".join(self._job_names.values()))]
        except ExecutorError:
            return  # slurmctld does not answer: `dcforge clean` cancels the run's jobs later
        if ids:
            slurm(["scancel", *ids], self._env, check=False)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._terminate_all()
            self.statuses()
            for status in self._statuses:  # the logs move into the report's run directory
                if status.log_path is not None and status.log_path.exists():
                    copy = self.run_dir / f"{status.role}-{status.index}-{status.host}.log"
                    shutil.copyfile(status.log_path, copy)
                    status.log_path = copy
                elif status.log_path is not None:
                    status.log_path = None
            shutil.rmtree(self._base, ignore_errors=True)
            try:
                self._base.parent.rmdir()  # the run's folder, once its last execution is gone
            except OSError:
                pass
        finally:
            RUNNING.discard(self)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # being written


class SlurmExecutor:
    """Roles as jobs on a partition's nodes (see the module docstring)."""

    name = "slurm"

    def __init__(self, options: SlurmOptions, env_name: str, run_id: str, nodes: list[SlurmNode] | None = None,
                 node_resources: Resources | None = None):
        self.options = options
        self.env_name = env_name
        self.run_id = run_id
        self._nodes = nodes
        self.node_resources = node_resources or Resources()
        """What each node of a torchrun workload asks for (the pool's GPUs per node), as on target kubernetes;
        by default one CPU and no GPU."""

    @property
    def nodes(self) -> tuple[str, ...]:
        """The machines roles are pinned to by name (node i of a role on the i-th); empty when not pinned."""
        return tuple(node.name for node in self._nodes) if self._nodes is not None else ()

    def pool_nodes(self) -> list[str]:
        """The partition's machines that can take a node now (not drained, down or unreachable), in name order."""
        return [node.name for node in self.partition_nodes()]

    def partition_nodes(self) -> list[SlurmNode]:
        return [node for node in partition_nodes(self.options.partition, self.options.client_env()) if node.usable]

    def pinned(self, names) -> "SlurmExecutor":
        """This executor placing node i of each role on `names[i]` (which must be nodes of the partition)."""
        known = {node.name: node for node in partition_nodes(self.options.partition, self.options.client_env())}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ExecutorError(f"node {unknown[0]} is not in Slurm partition {self.options.partition}")
        return SlurmExecutor(self.options, self.env_name, self.run_id, [known[name] for name in names],
                             self.node_resources)

    def tolerating(self, tolerations) -> "SlurmExecutor":
        """The same executor: Slurm has no taints. A node dcforge drained is retested because `--drain-failed`
        resumes it before the checks (dcforge.remediation.return_for_retest), not by tolerating anything."""
        return self

    def _placeable(self) -> list[SlurmNode]:
        return self._nodes if self._nodes is not None else self.partition_nodes()

    def start(self, workload: Workload, run_dir: Path) -> SlurmExecution:
        refuse_replacements(workload, self.name)
        if VolumePurpose.SECRETS in workload.volumes:
            raise ExecutorError(f"workload {workload.name!r} has a secrets volume, which the slurm executor does "
                                "not carry yet (a private folder on every node)")
        nodes = self._placeable()
        needed = max(role.nodes for role in workload.roles)
        if needed > len(nodes):
            raise ExecutorError(f"workload {workload.name!r} needs {needed} nodes, Slurm partition "
                                f"{self.options.partition} has {len(nodes)} usable"
                                + (f" ({', '.join(n.name for n in nodes)})" if nodes else ""))
        run_dir.mkdir(parents=True, exist_ok=True)
        key = f"{workload.name}-{uuid.uuid4().hex[:8]}"
        base = self.options.shared_dir / "dcforge-runs" / self.run_id / key
        base.mkdir(parents=True)
        used = nodes[:needed]
        role_ports = {role.name: {name: PORT_RANGE[0] + secrets.randbelow(PORT_RANGE[1] - PORT_RANGE[0])
                                  for name in role.ports} for role in workload.roles}
        role_addresses = {role.name: used[0].address for role in workload.roles if role.ports}
        placements = []
        for role in workload.roles:
            for index in range(role.nodes):
                node_base = base / f"{role.name}-{index}"
                volumes = {purpose.value: str(base / purpose.value if purpose is VolumePurpose.CHECKPOINTS
                                              else node_base / purpose.value) for purpose in workload.volumes}
                placements.append(Placement(role, index, used[index].name, used[index].address, used[0].address,
                                            role_ports[role.name], volumes, self.options.python,
                                            self.options.workdir, role_addresses, role_ports))
        job_names = {role.name: f"dcforge-{self.run_id}-{key}-{role.name}" for role in workload.roles}
        return SlurmExecution(workload, placements, self.options, run_dir, base, job_names,
                              run_comment(self.env_name, self.run_id)).start()
