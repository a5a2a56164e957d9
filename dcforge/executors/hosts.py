"""The `hosts` executor: every node is a process group on an SSH host (the system OpenSSH client).

One ControlMaster connection per host carries every session (probe, port lookup, the workload, kills). Host
keys are checked (`StrictHostKeyChecking=yes`) against the usual known_hosts files or the one the inventory
names; keys come from the usual places (ssh-agent, ~/.ssh) or the inventory. `BatchMode=yes` and
`ConnectTimeout` turn an unreachable host or a refused key into one line naming the host, never a prompt.

How nothing outlives the run on a remote host: the workload runs in its own session (`setsid`) under a small
POSIX shell supervisor that writes the session's process-group id to a pid file and watches its stdin, which is
a pipe from this process through ssh. When that pipe closes -- `stop()`, this process dying for any reason,
the ssh connection closing -- the supervisor sends SIGTERM to the group, then SIGKILL after the grace period.
`stop()` also kills the group through a second session as a fallback for a wedged connection, and
`kill_node()` (failure injection) SIGKILLs it at once the same way. An execution registers in the harness's
`RUNNING` children (dcforge.harness.processes), so the runner's `stop_everything()` on SIGINT/SIGTERM/SIGHUP
reaches it too; the ssh clients carry PR_SET_PDEATHSIG like every other child.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dcforge.executors.base import (ExecutorError, NodeState, NodeStatus, PlacedExecution, Placement, VolumePurpose,
                                    Workload, exit_state, refuse_replacements)
from dcforge.executors.local import PROJECT_ROOT
from dcforge.harness.processes import RUNNING, _child_setup, kill_group, signals_deferred

REMOTE_RUN_ROOT = "/tmp/dcforge-runs"
EXIT_SETUP_FAILED = 125


@dataclass(frozen=True)
class Host:
    name: str
    """Inventory name, used in logs and errors."""
    address: str
    """What ssh connects to and what other nodes reach this host at (the rendezvous address of node 0)."""
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    """Private key; default: ssh-agent and the usual ~/.ssh keys."""
    known_hosts_file: str | None = None
    """Default: ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts."""
    python: str = sys.executable
    """Interpreter with dcforge and the workloads installed on the host."""
    workdir: str = str(PROJECT_ROOT)
    """The project root on the host."""


@dataclass(frozen=True)
class SshOptions:
    connect_timeout_s: int = 10
    """Per connection attempt; an unreachable host is reported after about this long."""
    grace_s: float = 5.0
    """SIGTERM to SIGKILL on the remote process group."""
    check_host_keys: bool = True
    ssh: str = "ssh"


class HostUnreachable(ExecutorError):
    """A host could not be reached or refused us: one line naming it."""


def classify_ssh_failure(host: Host, stderr: str) -> str:
    """One line naming the host and what went wrong, from ssh's last error lines."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " ".join(lines).lower()
    if "host key verification failed" in text or "remote host identification has changed" in text:
        what = "host key not trusted (add it to known_hosts, or name a knownHostsFile in acceptance.hosts)"
    elif "permission denied" in text or "too many authentication failures" in text:
        what = "authentication failed"
    elif "timed out" in text or "no route to host" in text or "network is unreachable" in text:
        what = "unreachable"
    elif "connection refused" in text:
        what = "connection refused"
    elif "could not resolve" in text:
        what = "unknown host name"
    else:
        what = "ssh failed"
    detail = lines[-1] if lines else "no output from ssh"
    return f"host {host.name} ({host.address}:{host.port}): {what}: {detail}"


class SshConnections:
    """ssh command lines for a set of hosts sharing one ControlMaster each; `close()` ends the masters."""

    def __init__(self, options: SshOptions):
        self.options = options
        # short path: a unix socket path is limited to ~100 bytes and %C adds 40
        self.control_dir = Path(tempfile.mkdtemp(prefix="dcf-ssh-", dir="/tmp"))
        self._used: dict[str, Host] = {}

    def command(self, host: Host, remote: str, *, master: bool = False) -> list[str]:
        options = self.options
        args = [options.ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={options.connect_timeout_s}",
                "-o", f"StrictHostKeyChecking={'yes' if options.check_host_keys else 'no'}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", "ControlPersist=120", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR", "-p", str(host.port)]
        if host.known_hosts_file:
            args += ["-o", f"UserKnownHostsFile={host.known_hosts_file}"]
        if not options.check_host_keys:
            args += ["-o", "UserKnownHostsFile=/dev/null"]
        if host.identity_file:
            args += ["-i", host.identity_file, "-o", "IdentitiesOnly=yes"]
        if host.user:
            args += ["-l", host.user]
        self._used[host.name] = host
        return [*args, host.address, remote]

    def run(self, host: Host, remote: str, timeout_s: float | None = None) -> subprocess.CompletedProcess:
        """A short remote command; a connection failure or timeout raises HostUnreachable naming the host."""
        timeout_s = timeout_s if timeout_s is not None else self.options.connect_timeout_s + 10
        try:
            done = subprocess.run(self.command(host, remote), capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise HostUnreachable(f"host {host.name} ({host.address}:{host.port}): no answer within "
                                  f"{timeout_s:.0f} s") from None
        if done.returncode == 255:  # ssh's own failure, never the remote command's
            raise HostUnreachable(classify_ssh_failure(host, done.stderr))
        return done

    def probe(self, hosts: list[Host]) -> None:
        """Connect to every host in parallel (which also starts its master); raise one line per bad host."""
        errors: dict[str, str] = {}

        def one(host: Host) -> None:
            try:
                self.run(host, "true")
            except HostUnreachable as error:
                errors[host.name] = str(error)

        threads = [threading.Thread(target=one, args=(host,), daemon=True) for host in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise HostUnreachable("; ".join(errors[host.name] for host in hosts if host.name in errors))

    def close(self) -> None:
        """End every master (bounded: a hung host must not keep the rest open) and remove the sockets' folder."""
        try:
            for host in self._used.values():
                args = self.command(host, "")[:-2]
                try:
                    subprocess.run([*args, "-O", "exit", host.address], capture_output=True, timeout=10,
                                   stdin=subprocess.DEVNULL)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            shutil.rmtree(self.control_dir, ignore_errors=True)


# `tree PID`: PID and its descendants, parents first (torchrun starts each worker in a session of its own, so a
# node's processes are a tree, not one process group); /proc children lists, else pgrep.
TREE_FUNCTION = ('tree() { echo "$1"; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null || pgrep -P "$1"); '
                 'do tree "$c"; done; }')
KILL_TREE = 'for p in $pids; do kill -KILL -- -"$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done'


def supervisor_script(placement: Placement, pid_file: str, grace_s: float) -> str:
    """The POSIX sh that runs one node on its host (see the module docstring for why it looks like this)."""
    q = shlex.quote
    env = " ".join(q(f"{key}={value}") for key, value in placement.env().items())
    command = " ".join(q(part) for part in placement.command())
    volumes = " ".join(q(path) for path in [str(Path(pid_file).parent), *placement.volumes.values()])
    return "\n".join([
        TREE_FUNCTION,
        f"mkdir -p {volumes} || exit {EXIT_SETUP_FAILED}",
        f"cd {q(placement.workdir)} || exit {EXIT_SETUP_FAILED}",
        "exec 3<&0",
        # in a non-interactive shell a background job is not a group leader, so setsid(1) does not fork:
        # $! is the new session's process-group id
        f"env {env} setsid {command} </dev/null 2>&1 &",
        "pid=$!",
        f"echo $pid > {q(pid_file)}",
        # the watcher: EOF on the pipe from dcforge -> SIGTERM the group (torchrun stops its workers), then
        # SIGKILL the whole tree as it was before the SIGTERM; from EOF on it ignores the `kill $watcher` below,
        # which would otherwise end it the moment the group leader exits, sparing workers in their own sessions
        f"( while read -r _ <&3; do :; done; trap '' TERM; pids=$(tree $pid); kill -TERM -- -$pid 2>/dev/null; "
        f"sleep {grace_s:g}; {KILL_TREE} ) </dev/null >/dev/null 2>&1 &",
        "watcher=$!",
        "wait $pid; code=$?",
        "kill $watcher 2>/dev/null",
        f"rm -f {q(pid_file)}",
        "exit $code",
    ])


def kill_tree_script(pid_file: str) -> str:
    """SIGKILL the node's whole process tree at once (failure injection, or a connection that hangs)."""
    return f"{TREE_FUNCTION}\npid=$(cat {shlex.quote(pid_file)} 2>/dev/null) && pids=$(tree $pid) && {KILL_TREE}; true"


def link_down_script(address: str, restore_after_s: float) -> str:
    """Take down the interface holding `address` on this host, and bring it back after `restore_after_s`.

    The interface is found and the permission proven (`ip link set up` on an up link changes nothing) while the
    ssh session still answers; the cut itself runs detached, half a second later, so the session that started it
    ends first (it would otherwise hang on the link it just cut)."""
    q = shlex.quote
    find = f"ip -o addr show to {q(address)} | awk '{{sub(/@.*/, \"\", $2); print $2; exit}}'"
    cut = f'sleep 0.5; ip link set dev "$0" down; sleep {restore_after_s:g}; ip link set dev "$0" up'
    return "\n".join([
        f"dev=$({find})",
        f'[ -n "$dev" ] || {{ echo "no interface holds {address}" >&2; exit 3; }}',
        'ip link set dev "$dev" up || exit 3',
        f'setsid sh -c {q(cut)} "$dev" </dev/null >/dev/null 2>&1 &',
        'echo "$dev"',
    ])


class HostsExecution(PlacedExecution):
    def __init__(self, workload: Workload, placements: list[Placement], hosts: dict[str, Host],
                 connections: SshConnections, run_dir: Path, run_id: str):
        self.workload = workload
        self.run_dir = run_dir
        self._placements = placements
        self._hosts = hosts
        self._connections = connections
        self._run_id = run_id
        self._sessions: list[subprocess.Popen] = []
        self._logs: list = []
        self._killed: set[int] = set()
        self._isolated: set[str] = set()
        """Hosts whose link was taken down (isolate_node): nothing more is asked of them."""
        self._statuses = [NodeStatus(p.role.name, p.index, p.host, p.address,
                                     log_path=run_dir / f"{p.role.name}-{p.index}-{p.host}.log") for p in placements]
        self._stopped = False

    def _pid_file(self, placement: Placement) -> str:
        return f"{REMOTE_RUN_ROOT}/{self._run_id}/{placement.role.name}-{placement.index}.pgid"

    def start(self) -> "HostsExecution":
        RUNNING.add(self)  # a terminating signal stops it through the runner like any local child
        try:
            for placement, status in zip(self._placements, self._statuses):
                script = supervisor_script(placement, self._pid_file(placement), self._connections.options.grace_s)
                log = open(status.log_path, "ab")
                self._logs.append(log)
                command = self._connections.command(self._hosts[placement.host], f"sh -c {shlex.quote(script)}")
                # stdin is a pipe we never write: its closing is the remote supervisor's signal to stop. The ssh
                # client dies with dcforge (PR_SET_PDEATHSIG), and so does our end of that pipe.
                with signals_deferred():
                    self._sessions.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log,
                                                           stderr=subprocess.STDOUT, start_new_session=True,
                                                           preexec_fn=_child_setup(os.getpid())))
                status.state = NodeState.RUNNING
        except BaseException:
            self.stop()
            raise
        return self

    def statuses(self) -> list[NodeStatus]:
        for position, (session, status) in enumerate(zip(self._sessions, self._statuses)):
            code = session.poll()
            if code is not None and not status.state.finished:
                status.exit_code = code
                status.state = exit_state(position in self._killed, code)
                if status.state is NodeState.FAILED:
                    if code == 255:
                        status.reason = f"ssh to {status.host} failed (see {status.log_path.name})"
                    elif code == EXIT_SETUP_FAILED:
                        status.reason = f"could not prepare the volumes or enter {self._placements[position].workdir}"
        return list(self._statuses)

    def kill_node(self, role: str, index: int) -> None:
        position = self._position(role, index)
        placement = self._placements[position]
        self._killed.add(position)
        self._connections.run(self._hosts[placement.host], kill_tree_script(self._pid_file(placement)))

    def isolate_node(self, role: str, index: int, restore_after_s: float) -> None:
        """kill_node, then the host's interface down (link_down_script), up again after `restore_after_s`."""
        position = self._position(role, index)
        host = self._hosts[self._placements[position].host]
        self.kill_node(role, index)
        # the node's session ends once its supervisor saw the workload die: let that exit status arrive over the
        # link before the link goes, or the ssh client would wait for its keep-alives to give up (15 s)
        deadline = time.monotonic() + 3.0
        while self._sessions[position].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._isolated.add(host.name)
        done = self._connections.run(host, link_down_script(host.address, restore_after_s))
        if done.returncode != 0:
            raise ExecutorError(f"host {host.name}: cannot take its link down: "
                                f"{done.stderr.strip() or 'exit ' + str(done.returncode)}")

    def read_result(self, role: str, index: int, name: str) -> bytes:
        placement = self._placements[self._position(role, index)]
        return self._cat(placement.host, f"{placement.volumes[VolumePurpose.RESULTS.value]}/{name}")

    def read_shared(self, name: str) -> bytes:
        placement = next((p for p in self._placements if p.host not in self._isolated), None)
        if placement is None:
            raise ExecutorError(f"every host of workload {self.workload.name!r} is isolated")
        return self._cat(placement.host, f"{placement.volumes[VolumePurpose.CHECKPOINTS.value]}/{name}")

    def _cat(self, host_name: str, path: str) -> bytes:
        done = subprocess.run(self._connections.command(self._hosts[host_name], f"cat {shlex.quote(path)}"),
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ExecutorError(f"host {host_name}: cannot read {path}: "
                                f"{done.stderr.decode(errors='replace').strip() or 'exit ' + str(done.returncode)}")
        return done.stdout

    def _terminate_all(self) -> None:
        running = [position for position, session in enumerate(self._sessions) if session.poll() is None]
        self._killed.update(running)
        for position in running:  # EOF on stdin: each supervisor TERMs, then KILLs, its process group
            try:
                self._sessions[position].stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + self._connections.options.grace_s + 2.0
        while time.monotonic() < deadline and any(self._sessions[p].poll() is None for p in running):
            time.sleep(0.05)
        for position in running:
            if self._sessions[position].poll() is None:  # wedged connection: kill through a fresh session
                placement = self._placements[position]
                try:
                    self._connections.run(self._hosts[placement.host],
                                          kill_tree_script(self._pid_file(placement)), timeout_s=15)
                except ExecutorError:
                    pass
                kill_group(self._sessions[position].pid, grace_s=1.0, reap=self._sessions[position].poll)

    def _remove_run_folders(self) -> None:
        """The run's folder on every host (scratch, results, checkpoints): results were read before stop. An
        isolated host keeps its folder: its link may still be down (its processes are gone, that is what counts)."""
        for host in self._hosts.values():
            if host.name in self._isolated:
                continue
            try:
                self._connections.run(host, f"rm -rf {shlex.quote(f'{REMOTE_RUN_ROOT}/{self._run_id}')}", timeout_s=30)
            except ExecutorError:
                pass

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._terminate_all()
            self.statuses()
            self._remove_run_folders()
        finally:
            for log in self._logs:
                log.close()
            self._connections.close()
            RUNNING.discard(self)



class HostsExecutor:
    """Places node i of each role on hosts[i]; every host is probed before anything starts."""

    name = "hosts"

    def __init__(self, hosts: list[Host], options: SshOptions | None = None):
        if not hosts:
            raise ValueError("the hosts executor needs at least one host")
        self.hosts = list(hosts)
        self.options = options or SshOptions()

    def start(self, workload: Workload, run_dir: Path) -> HostsExecution:
        refuse_replacements(workload, self.name)
        if VolumePurpose.SECRETS in workload.volumes:
            raise ExecutorError(f"workload {workload.name!r} has a secrets volume, which the hosts executor does not "
                                "carry: a file sent over SSH would need a private folder on every host (not yet)")
        needed = max(role.nodes for role in workload.roles)
        if needed > len(self.hosts):
            raise ExecutorError(f"workload {workload.name!r} needs {needed} hosts, the inventory has "
                                f"{len(self.hosts)}")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = f"{workload.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        connections = SshConnections(self.options)
        try:
            used = self.hosts[:needed]
            connections.probe(used)
            leader = used[0]
            role_ports = {role.name: {name: self._free_port(connections, leader) for name in role.ports}
                          for role in workload.roles}
            role_addresses = {role.name: leader.address for role in workload.roles if role.ports}
            placements = []
            for role in workload.roles:
                ports = role_ports[role.name]
                for index in range(role.nodes):
                    host = used[index]
                    base = f"{REMOTE_RUN_ROOT}/{run_id}"
                    volumes = {purpose.value: (f"{base}/{purpose.value}" if purpose is VolumePurpose.CHECKPOINTS
                                               else f"{base}/{role.name}-{index}/{purpose.value}")
                               for purpose in workload.volumes}
                    placements.append(Placement(role, index, host.name, host.address, leader.address, ports,
                                                volumes, host.python, host.workdir, role_addresses, role_ports))
        except BaseException:
            connections.close()
            raise
        return HostsExecution(workload, placements, {h.name: h for h in used}, connections, run_dir,
                              run_id).start()

    @staticmethod
    def _free_port(connections: SshConnections, host: Host) -> int:
        """A port free on `host` now (bound to port 0 there); the small race is the same as locally."""
        probe = "import socket; s=socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
        done = connections.run(host, f"{shlex.quote(host.python)} -c {shlex.quote(probe)}")
        if done.returncode != 0:
            raise ExecutorError(f"host {host.name}: cannot run {host.python}: {done.stderr.strip()}")
        return int(done.stdout.strip())
