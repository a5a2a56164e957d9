"""Target slurm on real Slurm daemons: slurmctld, 3 slurmd and munged from Debian's packages in network-namespace
hosts (benchmarks/netns_slurm.py), driven by the real srun, squeue, scontrol and scancel.

Root, iproute2, openssh-server, slurmctld, slurmd, slurm-client and munge are needed (`make system-deps`);
otherwise every test here skips and says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.netns_slurm import PARTITION, accept_on_slurm, missing_prerequisites, slurm_cluster, write_slurm_env
from dcforge.executors.base import ExecutorError, NodeState, Role, Workload
from dcforge.executors.slurm import SlurmExecutor, SlurmOptions

pytestmark = [pytest.mark.slow]

_missing = missing_prerequisites()
needs_slurm = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if _missing:
        pytest.skip(_missing)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def executor(cluster, tmp_path: Path, **changes) -> SlurmExecutor:
    options = SlurmOptions(PARTITION, tmp_path / "shared", slurm_conf=str(cluster.conf), grace_s=5, **changes)
    (tmp_path / "shared").mkdir(exist_ok=True)
    return SlurmExecutor(options, "nsslurm", f"run-{os.getpid()}")


def no_job_left(cluster, timeout_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := cluster.jobs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@needs_slurm
@pytest.mark.timeout(60)
def test_each_node_runs_on_its_named_slurm_node_and_nothing_is_left(cluster, tmp_path):
    role = Role("probe", ("sh", "-c", "ip -4 -o addr show dcf0 | awk '{{print $4}}'; echo $SLURM_JOB_NAME; "
                          "echo {node_index} {leader_address} {port[p]} > {volume[results]}/me.txt"),
                nodes=3, ports=("p",))
    with executor(cluster, tmp_path).start(Workload("probe", (role,)), tmp_path / "run") as execution:
        outcome = execution.wait(30)
        mine = [execution.read_result("probe", i, "me.txt").decode().split() for i in range(3)]
    assert outcome.succeeded, outcome.failure_summary()
    for i, (node, name) in enumerate(zip(outcome.nodes, cluster.nodes)):
        address, job_name = node.log_path.read_text().split()
        assert (node.host, address) == (name, f"{cluster.address(name)}/24")  # it ran in that node's namespace
        assert job_name.startswith(f"dcforge-run-{os.getpid()}-probe-") and node.log_path.parent == tmp_path / "run"
        assert mine[i] == [str(i), cluster.address("node1"), mine[0][2]]
    assert not list((tmp_path / "shared").rglob("*.txt"))  # the shared run folder is removed at stop
    assert no_job_left(cluster) == []


@needs_slurm
@pytest.mark.timeout(60)
def test_a_pending_job_shows_squeue_reason_and_past_the_limit_fails_naming_job_and_reason(cluster, tmp_path):
    cluster.scontrol("update", f"PartitionName={PARTITION}", "State=DOWN")
    seen: list[str] = []
    try:
        with executor(cluster, tmp_path, pending_limit_s=4).start(
                Workload("waits", (Role("w", ("true",), nodes=2),)), tmp_path / "run") as execution:
            outcome = execution.wait(30, on_status=lambda s: seen.extend(n.reason for n in s))
    finally:
        cluster.scontrol("update", f"PartitionName={PARTITION}", "State=UP")
    assert any(reason.endswith("pending: PartitionDown") for reason in seen), seen
    summary = outcome.failure_summary()
    assert not outcome.succeeded and "\n" not in summary
    assert "still pending after 4 s: PartitionDown" in summary and "(dcforge-run-" in summary
    assert no_job_left(cluster) == []


@needs_slurm
@pytest.mark.timeout(90)
def test_a_node_lost_mid_job_fails_the_job_with_a_line_naming_it(cluster, tmp_path):
    role = Role("sleeper", ("sh", "-c", "echo up; sleep 120"), nodes=3)
    with executor(cluster, tmp_path).start(Workload("sleeper", (role,)), tmp_path / "run") as execution:
        deadline = time.monotonic() + 30
        while any(s.state is not NodeState.RUNNING for s in execution.statuses()) and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.crash("node2")  # slurmd, the job's slurmstepd and the workload: the node is gone
        outcome = execution.wait(60)
    cluster.start_slurmd("node2")
    node2 = outcome.nodes[1]
    assert node2.state is NodeState.FAILED and "node2" in node2.reason, outcome.failure_summary()
    assert "\n" not in outcome.failure_summary()
    assert no_job_left(cluster) == []
    cluster.wait_idle(40)


@needs_slurm
@pytest.mark.timeout(60)
def test_kill_node_ends_that_node_only_through_a_step_beside_it(cluster, tmp_path):
    role = Role("sleeper", ("sh", "-c", "sleep 120"), nodes=2, min_nodes=1)
    with executor(cluster, tmp_path).start(Workload("sleeper", (role,)), tmp_path / "run") as execution:
        deadline = time.monotonic() + 30
        while any(s.state is not NodeState.RUNNING for s in execution.statuses()) and time.monotonic() < deadline:
            time.sleep(0.2)
        execution.kill_node("sleeper", 1)
        deadline = time.monotonic() + 20
        while not execution.statuses()[1].state.finished and time.monotonic() < deadline:
            time.sleep(0.2)
        states = [s.state for s in execution.statuses()]
    assert states == [NodeState.RUNNING, NodeState.KILLED]
    assert no_job_left(cluster) == []


@needs_slurm
def test_too_many_nodes_is_one_line_naming_the_partition(cluster, tmp_path):
    with pytest.raises(ExecutorError, match=r"needs 4 nodes, Slurm partition gpu has 3 usable \(node1, node2, node3\)"):
        executor(cluster, tmp_path).start(Workload("big", (Role("r", ("true",), nodes=4),)), tmp_path / "run")


@needs_slurm
@pytest.mark.timeout(200)
def test_accept_runs_multinode_node_level_and_network_checks_through_slurm(cluster, tmp_path):
    proc, report = accept_on_slurm(tmp_path, cluster, ["allreduce_multinode", "node_level", "network"], {
        "allreduce_multinode": {"maxBytes": "64K", "factor": 8},
        "node_level": {"workloads": ["system"]}, "network": {"seconds": 1}})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    checks = {c["name"]: c for c in report["checks"]}
    assert [n["host"] for n in checks["allreduce_multinode"]["details"]["nodes"]] == cluster.nodes
    assert [n["host"] for n in checks["node_level"]["details"]["nodes"]] == cluster.nodes
    assert len(checks["network"]["details"]["pairs"]) == 3  # iperf3 between every pair of Slurm nodes
    assert "on 3 nodes x1 (slurm)" in proc.stdout
    assert no_job_left(cluster) == []


@needs_slurm
@pytest.mark.timeout(240)
def test_drain_failed_drains_the_rate_limited_node_with_its_reason_then_resumes_it(cluster, tmp_path):
    settings = {"slow_node": {"roundTimeoutS": 90}}
    try:
        cluster.limit_rate("node2", "8mbit")
        try:
            proc, report = accept_on_slurm(tmp_path / "1", cluster, ["slow_node"], settings, "--drain-failed")
        finally:
            cluster.unlimit_rate("node2")
        assert report["checks"][0]["details"]["culprit"] == "node2", proc.stdout[-3000:]
        reason = cluster.scontrol("show", "node", "-o", "node2")
        assert "Reason=dcforge: slow_node: slow node; action=drain_and_service [" in reason
        assert report["remediation"]["drained"] == ["node2"] and proc.returncode == 1
        assert "node2: drain: dcforge: slow_node:" in proc.stdout

        cluster.scontrol("update", "NodeName=node3", "State=DRAIN", "Reason=admin: fan")  # someone else's drain
        # a dry run resumes nothing (a check without node rows is enough to show it: the retest is skipped)
        proc, report = accept_on_slurm(tmp_path / "2", cluster, ["system"], {}, "--drain-failed", "--dry-run")
        assert "would return for a retest (drained by dcforge): node2" in proc.stdout
        assert report["remediation"]["unchanged"] == ["node2"] and report["remediation"]["dry_run"]
        assert "drained" in cluster.node_state("node2")

        proc, report = accept_on_slurm(tmp_path / "3", cluster, ["slow_node"], settings, "--drain-failed")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert report["remediation"]["resumed"] == ["node2"]
        assert cluster.node_state("node2") == "idle"
        assert "Reason=admin: fan" in cluster.scontrol("show", "node", "-o", "node3")  # never touched
    finally:
        cluster.scontrol("update", "NodeName=node2,node3", "State=RESUME", check=False)
    assert no_job_left(cluster) == []


@needs_slurm
@pytest.mark.timeout(120)
def test_ctrl_c_cancels_every_job_of_the_run_and_keeps_the_report(cluster, tmp_path):
    stacks = write_slurm_env(tmp_path, cluster, ["allreduce_multinode"], {
        "allreduce_multinode": {"minBytes": "64M", "maxBytes": "64M", "iterations": 100000}})
    proc = subprocess.Popen([sys.executable, "-m", "dcforge.cli", "accept", "--env", "nsslurm"], cwd=tmp_path,
                            env={**cluster.env, "DCFORGE_STACKS_DIR": str(stacks)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(" R" in line or "RUNNING" in line for line in cluster.jobs()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cluster.jobs(), "the run's job never showed in squeue"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-2000:]
    assert list((tmp_path / "reports" / "nsslurm").glob("*/report.json"))
    assert no_job_left(cluster, 5) == []


@needs_slurm
@pytest.mark.timeout(60)
def test_clean_cancels_the_environments_leftover_jobs_only(cluster, tmp_path):
    stacks = write_slurm_env(tmp_path, cluster, ["system"], {})

    def submit(name: str, comment: str) -> str:
        return subprocess.run(["sbatch", "--parsable", "-J", name, f"--comment={comment}", "--output=/dev/null",
                               "--wrap", "sleep 300"], capture_output=True, text=True, env=cluster.env,
                              check=True).stdout.strip()

    mine, other = submit("left", "dcforge env=nsslurm run=old"), submit("theirs", "dcforge env=other run=x")
    try:
        done = subprocess.run([sys.executable, "-m", "dcforge.cli", "clean", "--env", "nsslurm"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60,
                              env={**cluster.env, "DCFORGE_STACKS_DIR": str(stacks)})
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"cancelled job {mine} left" in done.stdout
        ids = [line.split()[0] for line in no_job_left(cluster, 5)]
        assert ids == [other]
    finally:
        subprocess.run(["scancel", other], env=cluster.env)
    assert no_job_left(cluster) == []
