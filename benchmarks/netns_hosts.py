"""N "hosts" on this machine: Linux network namespaces on a private bridge, each with its own OpenSSH server.

Each namespace gets `lo` and one veth end named `dcf0` with 10.251.X.(10+i)/24 on a bridge that exists only for
this run (the root namespace holds 10.251.X.1 on it, so ssh from here reaches every host). The servers use
throw-away host and client keys in a temp dir; known_hosts lists exactly those host keys, so host-key checking
stays on. All hosts share the filesystem, so the project's virtualenv is at the same path on each.

A host is slowed on the network with `limit_rate` (tbf on its veth ends) or in compute with `limit_cpu` (a CFS
quota on a cgroup v1 cpu group holding its sshd).

Everything is removed on exit, also when setup or the test fails: every process in the namespaces is killed,
then the cpu groups, namespaces, links and bridge are deleted. Only the namespaces' addresses and loopback carry
traffic.

The integration tests (tests/integration/test_hosts_executor.py, ...) and the multi-node benchmarks
(benchmarks/bisection_rounds.py, benchmarks/multinode_busbw.py) both build their hosts here, and run
`dcforge accept` on them through `accept_on_hosts`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dcforge.executors.hosts import Host

REPO = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
"""The cgroup v1 cpu controller: where `limit_cpu` puts a host's processes under a CFS quota."""
IFNAME = "dcf0"
"""The interface name inside every namespace: what GLOO_SOCKET_IFNAME names."""


def missing_prerequisites() -> str | None:
    """Why the namespace hosts cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network-namespace hosts need root (ip netns, a bridge, sshd)"
    for tool in ("ip", "ssh", "ssh-keygen", "setsid", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (make system-deps installs openssh-server and iproute2)"
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (make system-deps installs openssh-server)"
    probe = f"dcfprobe{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    return None


def cpu_limit_missing() -> str | None:
    """Why `NamespaceHosts.limit_cpu` cannot work here, or None."""
    if not (CPU_CGROUP / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_CGROUP} (limit_cpu puts a host under a CFS quota there)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_subnet() -> int:
    """A third octet of 10.251.X.0/24 that no route on this machine uses yet (other test runs may hold one)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for _ in range(100):
        octet = secrets.randbelow(254) + 1
        if f"10.251.{octet}." not in routes:
            return octet
    raise RuntimeError("no free 10.251.X.0/24 subnet")


@dataclass
class NamespaceHosts:
    hosts: list[Host]
    namespaces: list[str]
    bridge: str
    host_veths: list[str]
    """The root-namespace end of each host's veth (where a rate limit on traffic into the host goes)."""
    key_dir: Path
    sshd: list[subprocess.Popen] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)

    def pids(self, index: int) -> set[int]:
        """Processes in host `index`'s namespace other than its sshd listener."""
        out = subprocess.run(["ip", "netns", "pids", self.namespaces[index]], capture_output=True, text=True).stdout
        listener = self.sshd[index].pid if index < len(self.sshd) else -1
        return {int(pid) for pid in out.split()} - {listener}

    def limit_rate(self, index: int, rate: str) -> None:
        """Slow host `index` both ways with a token bucket on its veth ends (this kernel has no netem)."""
        for prefix, dev in ((["tc"], self.host_veths[index]),
                            (["ip", "netns", "exec", self.namespaces[index], "tc"], IFNAME)):
            subprocess.run([*prefix, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kb",
                            "latency", "400ms"], check=True, capture_output=True)


    def limit_cpu(self, index: int, cores: float) -> None:
        """Slow host `index`'s compute to `cores` CPUs with a CFS quota: its sshd listener and whatever runs there
        now go into a cpu cgroup of their own, and every session started later inherits it from the listener."""
        group = CPU_CGROUP / self.namespaces[index]
        group.mkdir(exist_ok=True)
        self.cgroups.append(group)
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(int(cores * 100000)))
        for pid in {self.sshd[index].pid, *self.pids(index)}:  # `ip netns exec` execs sshd: the same pid
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                pass


def _remove_cgroup(group: Path) -> None:
    """rmdir refuses (EBUSY) while a killed task is still exiting: retry for a moment."""
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _kill_namespace_processes(namespace: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for_port(address: str, port: int, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd on {address} exited with {process.returncode}: {log.read_text()[-500:]}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd on {address}:{port} not listening after {timeout_s:.0f} s")


@contextmanager
def namespace_hosts(count: int, work_dir: Path):
    tag = secrets.token_hex(3)
    octet = _free_subnet()
    bridge = f"dcfbr{tag}"
    namespaces = [f"dcf{tag}h{i}" for i in range(count)]
    host_veths = [f"dcf{tag}v{i}" for i in range(count)]
    key_dir = work_dir / "ssh"
    key_dir.mkdir(parents=True)
    env = NamespaceHosts([], namespaces, bridge, host_veths, key_dir)
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"10.251.{octet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_dir / "id_client")], check=True)
        (key_dir / "authorized_keys").write_text((key_dir / "id_client.pub").read_text())
        known_hosts = []
        for i, namespace in enumerate(namespaces):
            address = f"10.251.{octet}.{10 + i}"
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("link", "add", host_veths[i], "type", "veth", "peer", "name", f"dcf{tag}n{i}")
            _ip("link", "set", f"dcf{tag}n{i}", "netns", namespace)
            _ip("-n", namespace, "link", "set", f"dcf{tag}n{i}", "name", IFNAME)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", IFNAME)
            _ip("-n", namespace, "link", "set", IFNAME, "up")
            _ip("link", "set", host_veths[i], "master", bridge)
            _ip("link", "set", host_veths[i], "up")
            host_key = key_dir / f"host_{i}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
            known_hosts.append(f"{address} {(host_key.with_suffix('.pub')).read_text().strip()}")
            config = key_dir / f"sshd_{i}.conf"
            config.write_text("\n".join([
                f"ListenAddress {address}", "Port 22", f"HostKey {host_key}",
                f"AuthorizedKeysFile {key_dir / 'authorized_keys'}", f"PidFile {key_dir / f'sshd_{i}.pid'}",
                "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "MaxSessions 50", "MaxStartups 50", "LogLevel ERROR",
                # bash sources ~/.bashrc for ssh commands only at shell level 1: this keeps the machine's own
                # login dotfiles (slow, or holding locks) out of the test hosts' sessions
                "SetEnv SHLVL=1", ""]))
            log = key_dir / f"sshd_{i}.log"
            with open(log, "wb") as log_file:
                env.sshd.append(subprocess.Popen(["ip", "netns", "exec", namespace, SSHD, "-D", "-e", "-f", str(config)],
                                                 stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True))
            env.hosts.append(Host(name=f"ns-host-{i}", address=address, user="root",
                                  identity_file=str(key_dir / "id_client"),
                                  known_hosts_file=str(key_dir / "known_hosts")))
        (key_dir / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        for i, host in enumerate(env.hosts):
            _wait_for_port(host.address, 22, 15, env.sshd[i], key_dir / f"sshd_{i}.log")
        yield env
    finally:
        for namespace in namespaces:
            _kill_namespace_processes(namespace)
        for process in env.sshd:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        for group in env.cgroups:
            _remove_cgroup(group)
        for namespace in namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        for veth in host_veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def write_hosts_env(tmp_path: Path, hosts_section: dict, checks: list[str], settings: dict) -> Path:
    """stacks/Pulumi.nshosts.yaml under tmp_path: the local environment with acceptance target hosts."""
    import yaml

    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    document["config"]["dcforge:acceptance"] = {"checks": checks, "settings": settings, "target": "hosts",
                                                "hosts": hosts_section, "defaultTimeoutS": 240}
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.nshosts.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return stacks


def section_for(env: NamespaceHosts) -> dict:
    """The `acceptance.hosts` section naming every namespace host."""
    first = env.hosts[0]
    return {"hosts": [{"name": h.name, "address": h.address} for h in env.hosts], "user": "root",
            "identityFile": first.identity_file, "knownHostsFile": first.known_hosts_file,
            "socketIfname": IFNAME, "connectTimeoutS": 3}


def accept_on_hosts(tmp_path: Path, hosts_section: dict, checks: list[str], settings: dict) -> tuple:
    """`dcforge accept` on an environment whose acceptance target is hosts; returns (process, report)."""
    stacks = write_hosts_env(tmp_path, hosts_section, checks, settings)
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "nshosts"], capture_output=True,
                          text=True, timeout=280, cwd=tmp_path, env={**os.environ, "DCFORGE_STACKS_DIR": str(stacks)})
    reports = list((tmp_path / "reports" / "nshosts").glob("*/report.json"))
    return proc, json.loads(reports[0].read_text()) if reports else None
