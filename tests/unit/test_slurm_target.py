"""Target slurm without daemons: its parsers on real Slurm output (tests/unit/data/slurm/README.md), the drain
reasons, the environment section's validation, and the fast node check's line and exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcforge.errors import DcforgeError
from dcforge.executors.slurm_commands import drain_reason, parse_node, parse_sinfo, parse_squeue
from dcforge.findings import Action
from dcforge.node_check import NodeCheck, check_interfaces, check_mounts
from dcforge.remediation import REASON_LIMIT, drain_reasons, drain_text
from dcforge.spec.loader import load_environment

REPO = Path(__file__).resolve().parents[2]
SAMPLES = Path(__file__).parent / "data" / "slurm"


def test_sinfo_nodes_with_addresses_and_which_can_take_jobs():
    nodes = parse_sinfo((SAMPLES / "sinfo_nodes.txt").read_text())
    assert [(n.name, n.address.rsplit(".", 1)[1], n.state, n.usable) for n in nodes] == [
        ("node1", "11", "idle", True), ("node2", "12", "drained", False), ("node3", "13", "idle", True)]
    assert not parse_sinfo("node4|10.0.0.4|down*\n")[0].usable
    assert not parse_sinfo("node4|10.0.0.4|allocated*\n")[0].usable  # not responding


def test_squeue_gives_the_pending_reason_and_the_comment():
    (job,) = parse_squeue((SAMPLES / "squeue_pending.txt").read_text())
    assert (job.job_id, job.name, job.state, job.reason) == ("1", "dcforge-r1-w-a", "PENDING", "PartitionDown")
    assert job.comment == "dcforge env=nsslurm run=r1"


def test_scontrol_node_drain_reason_without_user_and_time():
    drained = parse_node((SAMPLES / "scontrol_show_node_drained.txt").read_text())
    assert drained["State"] == "IDLE+DRAIN" and drained["NodeAddr"].startswith("10.251.")
    assert drain_reason(drained) == "dcforge: slow_node: slow node; action=drain_and_service"
    assert drain_reason(parse_node((SAMPLES / "scontrol_show_node_idle.txt").read_text())) is None


def report_with(rows_by_check: dict[str, list[dict]]) -> dict:
    return {"checks": [{"name": name, "details": {"nodes": rows}} for name, rows in rows_by_check.items()]}


def test_drain_reason_names_check_finding_and_the_most_urgent_action():
    report = report_with({
        "slow_node": [{"host": "n1", "verdict": "slow"}, {"host": "n2", "verdict": "cleared"}],
        "gpu_health": [{"host": "n1", "state": "failed", "reason": "GPU 3: a row remap is pending",
                        "action": Action.RESET_GPU.value},
                       {"host": "n2", "state": "failed", "reason": "XID 79", "action": Action.CONTACT_VENDOR.value}],
    })
    reasons = drain_reasons(report)
    # a failed row without an action: drain_and_service, more urgent than reset_gpu
    assert reasons["n1"] == ("dcforge: slow_node: slow node; gpu_health: failed: GPU 3: a row remap is pending "
                             "(action: reset GPU); action=drain_and_service")
    assert reasons["n2"] == "dcforge: gpu_health: failed: XID 79 (action: contact vendor); action=contact_vendor"
    assert drain_reasons(report_with({"slow_node": [{"host": "n3", "verdict": "cleared"}]})) == {}


def test_a_long_finding_is_cut_to_fit_slurms_reason_on_one_line():
    text = drain_text("node_level: " + "x\ny " * 200, "reboot_node")
    assert len(text) == REASON_LIMIT and "\n" not in text and text.endswith("…; action=reboot_node")


def write_env(tmp_path: Path, acceptance: dict, base: str = "local") -> Path:
    document = yaml.safe_load((REPO / "stacks" / f"Pulumi.{base}.yaml").read_text())
    document["config"]["dcforge:acceptance"] = acceptance
    path = tmp_path / "Pulumi.slurm.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.mark.parametrize("slurm, key, message", [
    (None, "dcforge:acceptance", "target slurm needs `slurm`"),
    ({"sharedDir": "/shared"}, "dcforge:acceptance.slurm", "give a partition"),
    ({"partition": "gpu"}, "dcforge:acceptance.slurm.sharedDir", "required"),
    ({"partition": "gpu", "sharedDir": "relative/dir"}, "dcforge:acceptance.slurm.sharedDir", "not an absolute path"),
    ({"partition": "gpu; rm", "sharedDir": "/s"}, "dcforge:acceptance.slurm.partition", ""),
    ({"partitions": {"nosuchpool": "gpu"}, "sharedDir": "/s"}, "dcforge:acceptance.slurm.partitions.nosuchpool",
     "unknown pool 'nosuchpool'"),
    ({"partition": "gpu", "sharedDir": "/s", "timeLimitMin": 0}, "dcforge:acceptance.slurm.timeLimitMin", ""),
])
def test_bad_slurm_section_names_the_key_in_one_line(tmp_path, slurm, key, message):
    acceptance = {"target": "slurm", **({"slurm": slurm} if slurm is not None else {})}
    with pytest.raises(DcforgeError) as error:
        load_environment(path=write_env(tmp_path, acceptance))
    assert key in str(error.value) and message in str(error.value)


def test_a_partition_per_pool(tmp_path):
    from dcforge.executors.slurm_target import slurm_options

    env = load_environment(path=write_env(tmp_path, {"target": "slurm", "slurm": {
        "partition": "batch", "sharedDir": "/shared", "account": "acct", "qos": "high", "slurmConf": "slurm.conf"}},
        "dev"))
    pool, other = (p.name for p in env.spec.gpu_pools)
    options = slurm_options(env)
    assert (options.partition, options.account, options.qos) == ("batch", "acct", "high")
    assert options.slurm_conf == str(tmp_path / "slurm.conf")  # relative to the environment file
    env = load_environment(path=write_env(tmp_path, {"target": "slurm", "slurm": {
        "partitions": {pool: "gpu-a", other: "gpu-b"}, "sharedDir": "/shared"}}, "dev"))
    assert (slurm_options(env).partition, slurm_options(env, other).partition) == ("gpu-a", "gpu-b")
    with pytest.raises(DcforgeError, match=f"dcforge:acceptance.slurm.partitions: pool '{other}' has no partition"):
        load_environment(path=write_env(tmp_path, {"target": "slurm", "slurm": {
            "partitions": {pool: "gpu-a"}, "sharedDir": "/shared"}}, "dev"))


def test_slurm_conf_variables_from_the_environment_file():
    from dcforge.inventory import slurm_vars

    spec = load_environment("prod").spec
    cluster = slurm_vars(spec)
    first, pool = cluster["nodes"][0], spec.gpu_pools[0]
    assert first["names"] == ["prod-train-a-[01-64]"]  # Ansible's [01:64] written as a Slurm hostlist
    assert (first["gpus"], first["cpus"]) == (pool.gpus_per_node, pool.cpus_per_node)
    assert 0.9 * pool.memory_gi_per_node * 1024 < first["memory_mib"] < pool.memory_gi_per_node * 1024  # OS's share
    assert [p["name"] for p in cluster["partitions"]] == [pool.name for pool in spec.gpu_pools]


def test_node_check_line_puts_the_most_urgent_failure_first(tmp_path):
    result = NodeCheck()
    check_mounts(result, ("/proc", str(tmp_path)))
    check_interfaces(result, ("lo", "dcfnope0"))
    assert result.checked == ["mount /proc", f"mount {tmp_path}", "interface lo", "interface dcfnope0"]
    assert result.line(0.1) == (f"ERROR dcforge node-check: {tmp_path} is not mounted; interface dcfnope0 does "
                                "not exist; action=reboot_node")
    assert NodeCheck(checked=["interface lo"]).line(0.25) == "OK dcforge node-check: interface lo (0.25 s)"


@pytest.mark.parametrize("args, code, start", [
    (["--fast", "--interface", "lo", "--mount", "/proc"], 0, "OK dcforge node-check: "),
    (["--fast", "--interface", "dcfnope0"], 1, "ERROR dcforge node-check: interface dcfnope0 does not exist"),
    (["--fast", "--gpus", "8"], 1, "ERROR dcforge node-check: 8 GPUs expected, NVML unreadable"),
])
def test_node_check_command_exit_status_and_one_line(args, code, start):
    if code == 1 and "--gpus" in args and Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver: the GPUs are readable")
    done = subprocess.run([sys.executable, "-m", "dcforge.cli", "node-check", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert (done.returncode, done.stdout.count("\n")) == (code, 1), done.stdout + done.stderr
    assert done.stdout.startswith(start)


def test_node_check_without_fast_is_bad_input():
    done = subprocess.run([sys.executable, "-m", "dcforge.cli", "node-check"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 2 and "add --fast" in done.stderr and "Traceback" not in done.stderr


def test_node_check_judges_a_real_kernel_log_xid_by_the_gpu_health_rules():
    """The repository's /dev/kmsg sample (tests/unit/gpu_outputs/kmsg-xid79.txt) through the gpu_health rules: XID 79
    and a driver other than the pinned one fail the node, with the most urgent action of the two."""
    from dcforge.gpu.kernel_log import parse_xid_lines
    from dcforge.node_check import Expectations, judge_gpus

    xids = parse_xid_lines((Path(__file__).parent / "gpu_outputs" / "kmsg-xid79.txt").read_text())
    result = NodeCheck()
    judge_gpus(result, Expectations(driver="570.172.08"), [], xids, "570.133.20")
    line = result.line(0.1)
    assert line.startswith("ERROR dcforge node-check: ") and "79" in line and "\n" not in line
    assert "driver 570.133.20, expected 570.172.08" in line
    assert "XID 79 (GPU has fallen off the bus)" in line
    assert line.endswith("; action=drain_and_service")  # the driver mismatch's, more urgent than XID 79's reboot
