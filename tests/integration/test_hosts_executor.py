"""The hosts executor over real SSH to network-namespace hosts (benchmarks/netns_hosts.py).

Root, iproute2 and openssh-server are needed (`make system-deps`); otherwise every test here skips and says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks.netns_hosts import (IFNAME, accept_on_hosts, cpu_limit_missing, missing_prerequisites, namespace_hosts,
                                    section_for, write_hosts_env)
from dcforge.executors.base import ExecutorError, NodeState, Role, Workload
from dcforge.executors.hosts import Host, HostsExecutor, HostUnreachable, SshOptions
from dcforge.placement.torchrun import TorchrunJob, run_torchrun_job
from workloads.records import TrainStep, read_records

pytestmark = [pytest.mark.slow]

_missing = missing_prerequisites()
needs_namespaces = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if _missing:
        pytest.skip(_missing)
    with namespace_hosts(3, tmp_path_factory.mktemp("nshosts")) as env:
        yield env


def no_workload_left(env, timeout_s: float = 10.0) -> list[set[int]]:
    """Processes left in each namespace once the ssh masters had time to exit (empty sets when clean)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [env.pids(i) for i in range(len(env.hosts))]
        if not any(left) or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def running(env, index: int, needle: str) -> list[int]:
    """Processes in host `index`'s namespace whose command line mentions `needle`."""
    found = []
    for pid in env.pids(index):
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(pid)
        except OSError:
            pass
    return found


OPTIONS = SshOptions(connect_timeout_s=3, grace_s=2)


@needs_namespaces
@pytest.mark.timeout(60)
def test_every_node_runs_on_its_own_host_with_its_own_log(hosts, tmp_path):
    role = Role("probe", ("sh", "-c", "ip -4 -o addr show " + IFNAME + " | awk '{{print $4}}'; "
                          "echo {node_index} {leader_address} {port[p]} {volume[results]} > {volume[results]}/me.txt"),
                nodes=3, ports=("p",))
    with HostsExecutor(hosts.hosts, OPTIONS).start(Workload("probe", (role,)), tmp_path) as execution:
        outcome = execution.wait(30)
        mine = [execution.read_result("probe", i, "me.txt").decode().split() for i in range(3)]
    assert outcome.succeeded, outcome.failure_summary()
    for i, (node, host) in enumerate(zip(outcome.nodes, hosts.hosts)):
        assert node.host == host.name
        assert node.log_path.read_text().strip() == f"{host.address}/24"  # it really ran in that namespace
        assert mine[i][:2] == [str(i), hosts.hosts[0].address]
        assert not Path(mine[i][3]).exists()  # the run's folders are removed from every host at stop
    assert no_workload_left(hosts) == [set(), set(), set()]


@needs_namespaces
@pytest.mark.timeout(60)
def test_kill_node_kills_the_whole_tree_and_stop_leaves_nothing(hosts, tmp_path):
    # a child in a session of its own, like torchrun's workers: killing the node's group alone would miss it
    spawn = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(120)'], start_new_session=True); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")
    role = Role("sleeper", ("{python}", "-c", spawn, "{volume[results]}/child.pid"), nodes=3)
    with HostsExecutor(hosts.hosts, OPTIONS).start(Workload("sleeper", (role,)), tmp_path) as execution:
        deadline = time.monotonic() + 20
        child = b""
        while not child and time.monotonic() < deadline:
            try:
                child = execution.read_result("sleeper", 1, "child.pid")
            except ExecutorError:
                time.sleep(0.2)
        assert int(child) in hosts.pids(1)
        execution.kill_node("sleeper", 1)
        time.sleep(0.5)
        assert int(child) not in hosts.pids(1)
        outcome = execution.wait(20)
    assert outcome.nodes[1].state is NodeState.KILLED
    assert "sleeper/1 on ns-host-1: killed" in outcome.failure_summary()
    assert no_workload_left(hosts) == [set(), set(), set()]


@needs_namespaces
@pytest.mark.timeout(60)
def test_unreachable_host_and_refused_key_are_one_line_naming_the_host(hosts, tmp_path):
    gone = Host("ns-host-gone", "10.251.0.254" if not hosts.hosts[0].address.startswith("10.251.0.")
                else "10.251.255.254", user="root", identity_file=hosts.hosts[0].identity_file,
                known_hosts_file=hosts.hosts[0].known_hosts_file)
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as error:
        HostsExecutor([hosts.hosts[0], gone], OPTIONS).start(
            Workload("x", (Role("r", ("true",), nodes=2),)), tmp_path)
    message = str(error.value)
    assert message.startswith(f"host ns-host-gone ({gone.address}:22): ") and "\n" not in message
    assert time.monotonic() - started < OPTIONS.connect_timeout_s + 12

    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    stranger = Host(hosts.hosts[1].name, hosts.hosts[1].address, user="root", identity_file=str(other_key),
                    known_hosts_file=hosts.hosts[1].known_hosts_file)
    with pytest.raises(HostUnreachable, match=r"^host ns-host-1 \(.*\): authentication failed: "):
        HostsExecutor([stranger], OPTIONS).start(Workload("x", (Role("r", ("true",)),)), tmp_path)

    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    untrusted = Host(hosts.hosts[2].name, hosts.hosts[2].address, user="root",
                     identity_file=hosts.hosts[2].identity_file, known_hosts_file=str(empty_known_hosts))
    with pytest.raises(HostUnreachable, match=r"^host ns-host-2 \(.*\): host key not trusted"):
        HostsExecutor([untrusted], OPTIONS).start(Workload("x", (Role("r", ("true",)),)), tmp_path)
    assert no_workload_left(hosts) == [set(), set(), set()]


@needs_namespaces
@pytest.mark.timeout(150)
def test_three_node_training(hosts, tmp_path):
    from workloads.train_config import TrainConfig

    config = TrainConfig(preset="tiny", seq_len=64, global_batch_size=12, steps=10, warmup_steps=2,
                         metrics_file="{volume[results]}/m.jsonl",
                         checkpoint_dir="{volume[checkpoints]}/ckpt", checkpoint_every=10, keep_checkpoints=1,
                         resume=False, log_every=1)
    job = TorchrunJob("train.py", tuple(config.to_args()), nnodes=3, nproc_per_node=1, socket_ifname=IFNAME,
                      timeout_s=120, result_files=("m.jsonl",))
    run = run_torchrun_job(HostsExecutor(hosts.hosts, OPTIONS), "train3", job, tmp_path)
    assert run.outcome.succeeded, run.outcome.failure_summary() + "\n" + "\n".join(
        n.log_path.read_text()[-1500:] for n in run.outcome.nodes)
    _, data = run.result("m.jsonl")
    steps = read_records(data.decode().splitlines(), TrainStep)
    assert len(steps) == 10 and steps[-1].loss < steps[0].loss
    assert no_workload_left(hosts) == [set(), set(), set()]


@needs_namespaces
@pytest.mark.timeout(150)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_accept_leaves_no_process_in_any_namespace(hosts, tmp_path, sig):
    # an all-reduce that would run for hours: only the signal ends it
    stacks = write_hosts_env(tmp_path, section_for(hosts), ["allreduce_multinode"],
                             {"allreduce_multinode": {"minBytes": "64M", "maxBytes": "64M", "iterations": 100000,
                                                      }})
    accept = subprocess.Popen([sys.executable, "-m", "dcforge.cli", "accept", "--env", "nshosts"], cwd=tmp_path,
                              env={**os.environ, "DCFORGE_STACKS_DIR": str(stacks)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        # wait until the all-reduce runs on every host: torchrun's worker (`python -u workloads/allreduce.py`)
        worker = "\0-u\0workloads/allreduce.py\0"
        while time.monotonic() < deadline and not all(running(hosts, i, worker) for i in range(3)):
            time.sleep(0.2)
        assert all(running(hosts, i, worker) for i in range(3)), "the all-reduce never started"
        time.sleep(1.0)  # into the timed iterations
        accept.send_signal(sig)
        output, _ = accept.communicate(timeout=40)
    finally:
        if accept.poll() is None:
            os.killpg(accept.pid, signal.SIGKILL)
            accept.wait()
    assert accept.returncode == 128 + sig, output[-3000:]
    assert no_workload_left(hosts) == [set(), set(), set()]


@needs_namespaces
@pytest.mark.timeout(300)
def test_accept_runs_multinode_allreduce_on_the_inventory_hosts(hosts, tmp_path):
    import yaml

    inventory = {"all": {"children": {"ns_hosts": {"hosts": {
        h.name: {"ansible_host": h.address, "ansible_user": "root", "ansible_ssh_private_key_file": h.identity_file}
        for h in hosts.hosts}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    section = {"inventory": str(tmp_path / "hosts.yml"), "group": "ns_hosts",
               "knownHostsFile": hosts.hosts[0].known_hosts_file, "socketIfname": IFNAME, "connectTimeoutS": 3}
    proc, report = accept_on_hosts(tmp_path, section, ["allreduce_multinode"],
                                   {"allreduce_multinode": {"maxBytes": "64K", "factor": 8}})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = next(c for c in report["checks"] if c["name"] == "allreduce_multinode")
    assert check["status"] == "pass", check["reason"]
    assert check["details"]["world_size"] == 3 and check["details"]["executor"] == "hosts"
    assert [n["host"] for n in check["details"]["nodes"]] == ["ns-host-0", "ns-host-1", "ns-host-2"]
    assert all(n["state"] == "succeeded" for n in check["details"]["nodes"])
    assert check["metrics"]["busbw_gbps"]["value"] > 0 and check["metrics"]["sizes_incorrect"]["value"] == 0
    assert no_workload_left(hosts) == [set(), set(), set()]


@needs_namespaces
@pytest.mark.timeout(120)
def test_accept_with_an_unreachable_host_errors_naming_it(hosts, tmp_path):
    first = hosts.hosts[0]
    octet = first.address.split(".")[2]
    section = {"hosts": [{"name": first.name, "address": first.address},
                         {"name": "gpu-gone", "address": f"10.251.{octet}.99"}],
               "user": "root", "identityFile": first.identity_file, "knownHostsFile": first.known_hosts_file,
               "socketIfname": IFNAME, "connectTimeoutS": 3}
    proc, report = accept_on_hosts(tmp_path, section, ["allreduce_multinode"], {})
    assert proc.returncode != 0
    check = next(c for c in report["checks"] if c["name"] == "allreduce_multinode")
    assert check["status"] == "error"
    assert check["reason"].startswith(f"host gpu-gone (10.251.{octet}.99:22): ") and "\n" not in check["reason"]
    assert "gpu-gone" in proc.stdout + proc.stderr


@needs_namespaces
@pytest.mark.timeout(300)
def test_accept_names_the_rate_limited_host_by_pairwise_search_and_iperf3(tmp_path, tmp_path_factory):
    # hosts of its own: a rate limit must not outlive this test into the module's shared hosts
    with namespace_hosts(3, tmp_path_factory.mktemp("slowhosts")) as env:
        env.limit_rate(1, "8mbit")
        proc, report = accept_on_hosts(tmp_path, section_for(env), ["slow_node", "network"],
                                       {"slow_node": {"roundTimeoutS": 90}, "network": {"seconds": 1}})
        assert no_workload_left(env) == [set(), set(), set()]
    check = next(c for c in report["checks"] if c["name"] == "slow_node")
    assert check["status"] == "fail", (check["reason"], proc.stdout[-2000:])
    assert check["details"]["culprit"] == "ns-host-1"
    assert check["reason"].startswith("slow node: ns-host-1")
    assert check["metrics"]["rounds"]["value"] <= 3  # ⌈log2 3⌉ + 1
    verdicts = {n["host"]: n["verdict"] for n in check["details"]["nodes"]}
    assert verdicts == {"ns-host-0": "cleared", "ns-host-1": "slow", "ns-host-2": "cleared"}
    pairs = [p for r in check["details"]["rounds"] for p in r["pairs"]]
    assert all(p["slow"] == ("ns-host-1" in p["nodes"]) for p in pairs)
    network = next(c for c in report["checks"] if c["name"] == "network")
    assert network["status"] == "fail" and network["reason"].startswith("outliers: ns-host-1 ")
    assert [n["host"] for n in network["details"]["nodes"] if n["outlier"]] == ["ns-host-1"]
    assert len(network["details"]["pairs"]) == 3
    assert proc.returncode != 0


def throttle_once_training(env, index: int, cores: float, timeout_s: float = 150.0) -> bool:
    """Put host `index` under a cpu quota of `cores` once its training has logged a step: every step after the
    warm-up runs throttled, while the torch imports before it stay fast (a quota on them costs tens of seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in running(env, index, "\0-u\0workloads/train.py\0"):  # the rank, not its torchrun agent
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                metrics = Path(args[args.index("--metrics-file") + 1]).read_text()
            except (OSError, ValueError, IndexError):
                continue
            if '"record":"train.step"' in metrics:
                env.limit_cpu(index, cores)
                return True
        time.sleep(0.05)
    return False


@needs_namespaces
@pytest.mark.skipif(cpu_limit_missing() is not None, reason=cpu_limit_missing() or "")
@pytest.mark.timeout(240)
def test_accept_names_the_cpu_throttled_host_as_the_node_level_outlier(tmp_path, tmp_path_factory):
    # hosts of its own: the cpu quota must not outlive this test into the module's shared hosts
    with namespace_hosts(3, tmp_path_factory.mktemp("cpuhosts")) as env:
        # a twentieth of one core for ns-host-1 from its first training step on: a quota from the start would
        # barely separate it from the others when they share 2 loaded cores, and would slow its torch imports 20x
        throttled: list[bool] = []
        watcher = threading.Thread(target=lambda: throttled.append(throttle_once_training(env, 1, 0.05)))
        watcher.start()
        proc, report = accept_on_hosts(tmp_path, section_for(env), ["node_level"], {"node_level": {
            # the training figure is the one a cpu quota drops; the local test covers allreduce and checkpoint
            "workloads": ["system", "train"],
            # 64 tokens a step: ~1.5 s throttled; 10 steps for the loss to fall past the learning-rate warm-up; one
            # thread per rank: the three hosts share this machine's cores (spinning threads would blur the figures)
            "train": {"steps": 10, "warmupStepsExcluded": 4, "seqLen": 32, "globalBatchSize": 2, "nprocPerNode": 1,
                      "threads": 1}}})
        watcher.join()
        assert no_workload_left(env) == [set(), set(), set()]
    assert throttled == [True], "ns-host-1 never logged a training step"
    check = next(c for c in report["checks"] if c["name"] == "node_level")
    assert check["status"] == "fail", (check["reason"], check["details"]["nodes"], proc.stdout[-2000:])
    assert check["reason"].startswith("outliers: ns-host-1 (tokens_per_s ")
    rows = {row["host"]: row for row in check["details"]["nodes"]}
    assert list(rows) == ["ns-host-0", "ns-host-1", "ns-host-2"]
    assert all(row["state"] == "succeeded" and row["cpu_count"] >= 1 for row in rows.values())
    assert [(host, row["outlier_in"]) for host, row in rows.items() if row["outlier"]] == \
        [("ns-host-1", ["tokens_per_s"])]
    assert check["metrics"]["tokens_per_s.min"]["value"] == rows["ns-host-1"]["tokens_per_s"]
    assert check["metrics"]["tokens_per_s.min"]["formula"].endswith("(ns-host-1)")
    assert check["metrics"]["outliers"]["value"] == 1 and check["metrics"]["nodes_failed"]["value"] == 0
    report_dir = next((tmp_path / "reports" / "nshosts").glob("*/"))
    (row_html,) = [line for line in (report_dir / "report.html").read_text().splitlines()
                   if "<td>ns-host-1</td>" in line]
    assert row_html.startswith("<tr class=outlier") and "<td class=outlier-figure>" in row_html
    junit = ET.fromstring((report_dir / "junit.xml").read_text().split("\n", 1)[1])
    failing = [case.get("name") for case in junit.iter("testcase") if case.get("name").startswith("node_level ")
               and case.find("failure") is not None]
    assert failing == ["node_level ns-host-1"]
    assert proc.returncode == 1
