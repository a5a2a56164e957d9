"""A real Slurm cluster on this machine: slurmctld and 3 slurmd in network-namespace hosts, one munged.

Built on `netns_hosts.namespace_hosts` (namespaces on a private bridge, each with sshd): host 0 is the controller
(slurmctld), hosts 1..3 are the compute nodes `node1`..`node3` (one slurmd each, `slurmd -N nodeK`, its own spool
directory and pid file, listening on its namespace's address). One munged with one key serves every daemon and
client: the namespaces share the filesystem, and munge talks over a unix socket (a path, not the network), named by
`AuthInfo=socket=` in the generated slurm.conf. `SLURM_CONF` points the real clients (sbatch, srun, squeue,
scontrol, scancel) at that file; `env` is the environment to run them with.

What Slurm needs to run in a namespace without systemd (found out here, Debian 12's slurm-wlm 22.05):
`ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`, `JobAcctGatherType=jobacct_gather/none` (no cgroup
plugin: the namespaces have no cgroup of their own to delegate), `SlurmUser=root` (the tests run as root),
`SlurmctldHost=<this machine's hostname>(<controller address>)` (slurmctld refuses a host name that is not its
own, and every namespace shares the machine's UTS name), `slurmd -N` for the node name.

Everything is removed on exit, also when a daemon fails to start: the namespaces' processes are killed by
`namespace_hosts`, munged (in the controller's namespace) with them; the state folders go with the work dir.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.netns_hosts import IFNAME, NamespaceHosts, missing_prerequisites as hosts_missing, namespace_hosts

DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
PARTITION = "gpu"


def missing_prerequisites() -> str | None:
    """Why the Slurm test bed cannot be built here, or None."""
    missing = hosts_missing()
    if missing:
        return missing
    for path in DAEMONS:
        if not Path(path).exists():
            return f"{path} is missing (make system-deps installs slurmctld, slurmd, slurm-client and munge)"
    for tool in CLIENTS:
        if shutil.which(tool) is None:
            return f"{tool} is missing (make system-deps installs slurm-client)"
    return None


@dataclass
class SlurmCluster:
    hosts: NamespaceHosts
    """Host 0: the controller; host i (1..): node i."""
    conf: Path
    work_dir: Path
    nodes: list[str]
    daemons: dict[str, subprocess.Popen]
    """`slurmctld`, `munged`, `slurmd-nodeK` -> the process (each in its namespace)."""

    @property
    def env(self) -> dict[str, str]:
        """The environment the Slurm clients run with (SLURM_CONF names the generated file)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def address(self, node: str) -> str:
        return self.hosts.hosts[self.nodes.index(node) + 1].address

    def scontrol(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30, env=self.env)
        if check and done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def node_state(self, node: str) -> str:
        """sinfo's long state of `node` (idle, allocated, drained, down*...)."""
        return subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True,
                              timeout=30, env=self.env).stdout.strip()

    def jobs(self) -> list[str]:
        """`squeue` lines (id name state) of every job still queued or running."""
        out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=30,
                             env=self.env).stdout
        return [line for line in out.splitlines() if line.strip()]

    def crash(self, node: str) -> None:
        """The node dies: SIGKILL to its slurmd, the slurmstepd of its jobs and their processes (everything in its
        namespace but the sshd listener)."""
        index = self.nodes.index(node) + 1
        pids = self.hosts.pids(index)
        # frozen first, so that no process sees another die (a job's shell would record its task's exit status):
        # the whole machine stops at once, as a crash does
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.daemons[f"slurmd-{node}"].wait(timeout=10)

    def limit_rate(self, node: str, rate: str) -> None:
        self.hosts.limit_rate(self.nodes.index(node) + 1, rate)

    def unlimit_rate(self, node: str) -> None:
        """Remove `limit_rate`'s token buckets from the node's veth ends."""
        index = self.nodes.index(node) + 1
        for prefix, dev in ((["tc"], self.hosts.host_veths[index]),
                            (["ip", "netns", "exec", self.hosts.namespaces[index], "tc"], IFNAME)):
            subprocess.run([*prefix, "qdisc", "del", "dev", dev, "root"], capture_output=True)

    def start_slurmd(self, node: str) -> None:
        self.daemons[f"slurmd-{node}"] = self._slurmd(node)

    def _slurmd(self, node: str) -> subprocess.Popen:
        index = self.nodes.index(node) + 1
        log = open(self.work_dir / f"slurmd-{node}.log", "ab")
        try:
            return subprocess.Popen([*in_namespace(self.hosts.namespaces[index]), "/usr/sbin/slurmd", "-D",
                                     "-N", node, "-f", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        finally:
            log.close()

    def wait_idle(self, timeout_s: float = 30.0, nodes: list[str] | None = None) -> None:
        """Until every node (or `nodes`) answers as idle (its slurmd registered)."""
        deadline = time.monotonic() + timeout_s
        wanted = nodes or self.nodes
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {node: self.node_state(node) for node in wanted}
            if all(state == "idle" for state in states.values()):
                return
            for name, process in self.daemons.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: "
                                       f"{_tail(self.work_dir / f'{name}.log')}")
            time.sleep(0.3)
        raise RuntimeError(f"Slurm nodes not idle after {timeout_s:.0f} s: {states}")


def in_namespace(namespace: str) -> list[str]:
    """The command prefix that runs a daemon in `namespace`'s network only: `nsenter --net`, not `ip netns exec`,
    which remounts /sys and so hides /sys/fs/cgroup, where slurmd's cgroup plugin looks even when no cgroup plugin
    is configured for tasks or process tracking."""
    return ["nsenter", f"--net=/run/netns/{namespace}"]


def _tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-5:])
    except OSError:
        return "(no log)"


def slurm_conf(cluster_name: str, controller_address: str, work_dir: Path, munge_socket: Path,
               nodes: dict[str, str], cpus: int) -> str:
    """The test bed's slurm.conf: the plugins that run without systemd or cgroups (see the module docstring)."""
    node_lines = [f"NodeName={name} NodeHostname={name} NodeAddr={address} CPUs={cpus} State=UNKNOWN"
                  for name, address in nodes.items()]
    return "\n".join([
        f"ClusterName={cluster_name}",
        f"SlurmctldHost={socket.gethostname()}({controller_address})",
        f"SlurmctldPort={SLURMCTLD_PORT}", f"SlurmdPort={SLURMD_PORT}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={work_dir}/ctld-state",
        f"SlurmdSpoolDir={work_dir}/spool/%n",
        f"SlurmctldPidFile={work_dir}/slurmctld.pid", f"SlurmdPidFile={work_dir}/slurmd-%n.pid",
        f"SlurmctldLogFile={work_dir}/slurmctld.log", f"SlurmdLogFile={work_dir}/slurmd-%n.daemon.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill", "MpiDefault=none", "ReturnToService=2",
        # a dead slurmd is noticed within seconds (the tests kill one mid-job), and a node is free again at once
        "SlurmdTimeout=10", "SlurmctldTimeout=10", "MessageTimeout=5", "KillWait=2", "InactiveLimit=0",
        "MinJobAge=30", "SchedulerParameters=sched_interval=2",
        "SlurmctldDebug=info", "SlurmdDebug=info",
        *node_lines,
        f"PartitionName={PARTITION} Nodes={','.join(nodes)} Default=YES MaxTime=60 State=UP OverSubscribe=NO",
        ""])


@contextmanager
def slurm_cluster(work_dir: Path, compute_nodes: int = 3, start_timeout_s: float = 45.0):
    """A controller and `compute_nodes` slurmd hosts, idle and ready; torn down on exit whatever happened."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with namespace_hosts(compute_nodes + 1, work_dir / "hosts") as hosts:
        nodes = [f"node{i}" for i in range(1, compute_nodes + 1)]
        munge_dir = work_dir / "munge"
        munge_dir.mkdir(mode=0o700)
        key = munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        socket_path = munge_dir / "munge.socket"
        conf = work_dir / "slurm.conf"
        conf.write_text(slurm_conf(f"dcf{secrets.token_hex(2)}", hosts.hosts[0].address, work_dir, socket_path,
                                   {node: hosts.hosts[i + 1].address for i, node in enumerate(nodes)},
                                   os.cpu_count() or 1))
        for folder in ("ctld-state", *(f"spool/{node}" for node in nodes)):
            (work_dir / folder).mkdir(parents=True)
        cluster = SlurmCluster(hosts, conf, work_dir, nodes, {})
        controller = hosts.namespaces[0]

        def daemon(name: str, command: list[str]) -> None:
            with open(work_dir / f"{name}.log", "ab") as log:
                cluster.daemons[name] = subprocess.Popen([*in_namespace(controller), *command], stdout=log,
                                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                         start_new_session=True, env=cluster.env)

        daemon("munged", ["/usr/sbin/munged", "-F", "--force", f"--key-file={key}", f"--socket={socket_path}",
                          f"--pid-file={munge_dir}/munged.pid", f"--seed-file={munge_dir}/munged.seed",
                          f"--log-file={work_dir}/munged.daemon.log"])
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf)])
        for node in nodes:
            cluster.start_slurmd(node)
        try:
            cluster.wait_idle(start_timeout_s)
            yield cluster
        finally:
            for process in cluster.daemons.values():
                if process.poll() is None:
                    process.terminate()
            for process in cluster.daemons.values():
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


def write_slurm_env(tmp_path: Path, cluster: SlurmCluster, checks: list[str], settings: dict,
                    shared_dir: Path | None = None) -> Path:
    """stacks/Pulumi.nsslurm.yaml under tmp_path: the local environment with acceptance target slurm on `cluster`."""
    import yaml

    from benchmarks.netns_hosts import REPO

    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    shared = shared_dir or tmp_path / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    document["config"]["dcforge:acceptance"] = {
        "checks": checks, "settings": settings, "target": "slurm", "defaultTimeoutS": 240,
        "slurm": {"partition": PARTITION, "sharedDir": str(shared), "slurmConf": str(cluster.conf),
                  "socketIfname": IFNAME, "pendingLimitS": 60}}
    stacks = tmp_path / "stacks"
    stacks.mkdir(exist_ok=True)
    (stacks / "Pulumi.nsslurm.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return stacks


def accept_on_slurm(tmp_path: Path, cluster: SlurmCluster, checks: list[str], settings: dict,
                    *extra: str) -> tuple:
    """`dcforge accept` through Slurm on `cluster`; returns (process, report)."""
    import json
    import sys

    stacks = write_slurm_env(tmp_path, cluster, checks, settings)
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "nsslurm", *extra],
                          capture_output=True, text=True, timeout=280, cwd=tmp_path,
                          env={**cluster.env, "DCFORGE_STACKS_DIR": str(stacks)})
    reports = sorted((tmp_path / "reports" / "nsslurm").glob("*/report.json"))
    return proc, json.loads(reports[-1].read_text()) if reports else None
