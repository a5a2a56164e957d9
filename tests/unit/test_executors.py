"""The executor interface with the local executor: real processes, per-node templates, logs, kills, timeouts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from dcforge.executors.base import ExecutorError, NodeState, Placement, Readiness, Role, VolumePurpose, Workload
from dcforge.executors.hosts import Host, classify_ssh_failure, supervisor_script
from dcforge.executors.local import LocalExecutor

PY = sys.executable


def alive(pid: int) -> bool:
    """Running or sleeping; a killed process whose parent died too may linger as a zombie until init reaps it."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_role_rejects_zero_nodes_and_empty_command():
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        Role("worker", ("true",), nodes=0)
    with pytest.raises(ValueError, match="empty command"):
        Role("worker", ())


def test_templates_fill_node_fields_ports_and_volumes():
    role = Role("worker", ("{python}", "--rank={node_index}/{node_count}", "{leader_address}:{port[rdzv]}",
                           "{volume[results]}/out.json"), env={"ADDR": "{node_address}"}, nodes=3, ports=("rdzv",))
    placement = Placement(role, 2, "h2", "10.0.0.12", "10.0.0.10", {"rdzv": 29400}, {"results": "/r"}, "/py", "/w")
    assert placement.command() == ["/py", "--rank=2/3", "10.0.0.10:29400", "/r/out.json"]
    assert placement.env() == {"ADDR": "10.0.0.12"}


def test_local_executor_runs_every_node_and_reads_each_result(tmp_path):
    # literal braces are doubled: every command part is a template
    write = ("import json, os, sys; json.dump({{'index': int(sys.argv[1]), 'port': int(sys.argv[2]), "
             "'tag': os.environ['TAG']}}, open(sys.argv[3], 'w')); print('node', sys.argv[1], 'done')")
    role = Role("worker", ("{python}", "-c", write, "{node_index}", "{port[rdzv]}", "{volume[results]}/r.json"),
                env={"TAG": "n{node_index}"}, nodes=3, ports=("rdzv",))
    seen = []
    with LocalExecutor().start(Workload("demo", (role,)), tmp_path) as execution:
        outcome = execution.wait(60, on_status=lambda statuses: seen.append([s.state for s in statuses]))
        results = [json.loads(execution.read_result("worker", i, "r.json")) for i in range(3)]
    assert outcome.succeeded, outcome.failure_summary()
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["tag"] for r in results] == ["n0", "n1", "n2"]
    assert len({r["port"] for r in results}) == 1 and results[0]["port"] > 0  # one rendezvous port per role
    # called once per change: from running (or already done) to every node succeeded
    assert seen[-1] == [NodeState.SUCCEEDED] * 3
    assert all(state in (NodeState.RUNNING, NodeState.SUCCEEDED) for snapshot in seen for state in snapshot)
    assert all(before != after for before, after in zip(seen, seen[1:]))
    for i, status in enumerate(outcome.nodes):
        assert status.log_path.read_text().strip() == f"node {i} done"


def test_a_failed_node_stops_the_others_and_is_named(tmp_path):
    role = Role("worker", ("{python}", "-c", "import sys, time; sys.exit(3) if {node_index} == 1 else time.sleep(60)"),
                nodes=3)
    started = time.monotonic()
    with LocalExecutor(grace_s=1).start(Workload("demo", (role,)), tmp_path) as execution:
        outcome = execution.wait(60)
    assert time.monotonic() - started < 20
    assert not outcome.succeeded
    states = {s.index: (s.state, s.exit_code) for s in outcome.nodes}
    assert states[1] == (NodeState.FAILED, 3)
    assert states[0][0] is NodeState.KILLED and states[2][0] is NodeState.KILLED
    assert "worker/1 on local: failed (exit 3)" in outcome.failure_summary()


def test_timeout_kills_every_process_group_including_grandchildren(tmp_path):
    # each node starts a grandchild and records its pid: the whole group must die with the node
    spawn = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(120)']); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")
    role = Role("worker", ("{python}", "-c", spawn, "{volume[scratch]}/child.pid"), nodes=2)
    with LocalExecutor(grace_s=1).start(Workload("demo", (role,), volumes=(VolumePurpose.SCRATCH,)),
                                        tmp_path) as execution:
        deadline = time.monotonic() + 30
        pid_files = [tmp_path / f"worker-{i}" / "scratch" / "child.pid" for i in range(2)]
        while not all(p.exists() and p.read_text() for p in pid_files) and time.monotonic() < deadline:
            time.sleep(0.05)
        outcome = execution.wait(0.5)
    assert outcome.timed_out and "timed out" in outcome.failure_summary()
    assert all(s.state is NodeState.KILLED for s in outcome.nodes)
    grandchildren = [int(p.read_text()) for p in pid_files]
    time.sleep(0.2)
    assert not any(alive(pid) for pid in grandchildren)


def test_kill_node_is_failure_injection_of_the_whole_tree(tmp_path):
    # the child runs in a session of its own, as torchrun starts its workers: a group kill would miss it
    spawn = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(120)'], start_new_session=True); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")
    role = Role("worker", ("{python}", "-c", spawn, "{volume[scratch]}/child.pid"), nodes=2)
    with LocalExecutor(grace_s=1).start(Workload("demo", (role,), volumes=(VolumePurpose.SCRATCH,)),
                                        tmp_path) as execution:
        pid_file = tmp_path / "worker-0" / "scratch" / "child.pid"
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        execution.kill_node("worker", 0)
        time.sleep(0.2)
        assert not alive(int(pid_file.read_text()))
        outcome = execution.wait(30)
        with pytest.raises(KeyError, match="no node worker/5"):
            execution.kill_node("worker", 5)
    assert outcome.nodes[0].state is NodeState.KILLED and outcome.nodes[0].exit_code == -9
    assert outcome.nodes[1].state is NodeState.KILLED  # stopped because its peer died


def test_exception_inside_the_with_block_stops_every_node(tmp_path):
    role = Role("worker", ("{python}", "-c", "import time; time.sleep(60)"), nodes=2,
                readiness=Readiness(log_line="ready"))
    with pytest.raises(RuntimeError, match="boom"):
        with LocalExecutor(grace_s=1).start(Workload("demo", (role,)), tmp_path) as execution:
            pids = [p.pid for p in execution._processes]
            raise RuntimeError("boom")
    time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def test_supervisor_script_quotes_and_watches_stdin():
    role = Role("w", ("{python}", "-c", "print('a b')"), env={"X": "it's"})
    placement = Placement(role, 0, "h", "10.0.0.1", "10.0.0.1", {}, {"results": "/tmp/r x"}, "/v/py", "/w d")
    script = supervisor_script(placement, "/tmp/run/w-0.pgid", 2.0)
    assert "cd '/w d'" in script and "'/tmp/r x'" in script
    assert "setsid /v/py -c 'print('\"'\"'a b'\"'\"')'" in script
    assert "'X=it'\"'\"'s'" in script
    assert "read -r _ <&3" in script and "kill -TERM -- -$pid" in script and "sleep 2;" in script


@pytest.mark.parametrize("stderr, expected", [
    ("ssh: connect to host 10.9.9.9 port 22: Connection timed out", "unreachable"),
    ("root@10.9.9.9: Permission denied (publickey).", "authentication failed"),
    ("Host key verification failed.", "host key not trusted"),
    ("ssh: connect to host 10.9.9.9 port 22: Connection refused", "connection refused"),
    ("ssh: Could not resolve hostname nope: Name or service not known", "unknown host name"),
])
def test_ssh_failures_become_one_line_naming_the_host(stderr, expected):
    line = classify_ssh_failure(Host("gpu-07", "10.9.9.9"), f"warning: something\n{stderr}\n")
    assert line.startswith(f"host gpu-07 (10.9.9.9:22): {expected}")
    assert "\n" not in line and line.endswith(stderr)


def test_wait_ready_on_a_port_and_on_a_log_line(tmp_path):
    import urllib.request

    server = Role("server", ("{python}", "-m", "http.server", "--bind", "{node_address}", "{port[http]}"),
                  ports=("http",), readiness=Readiness(port="http", timeout_s=30))
    logger = Role("logger", ("{python}", "-c", "import time; time.sleep(0.5); print('serving now', flush=True); "
                             "time.sleep(60)"), readiness=Readiness(log_line="serving now", timeout_s=30))
    with LocalExecutor(grace_s=1).start(Workload("demo", (server, logger)), tmp_path) as execution:
        execution.wait_ready("server")
        port = execution._placements[0].ports["http"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        execution.wait_ready("logger")
        assert "serving now" in execution.statuses()[1].log_path.read_text()
        with pytest.raises(KeyError, match="no role 'nope'"):
            execution.wait_ready("nope")


def test_wait_ready_names_the_node_that_exits_or_stays_silent(tmp_path):
    quits = Role("quits", ("{python}", "-c", "import sys; sys.exit(4)"), readiness=Readiness(log_line="up"))
    silent = Role("silent", ("{python}", "-c", "import time; time.sleep(60)"),
                  readiness=Readiness(log_line="up", timeout_s=1))
    with LocalExecutor(grace_s=1).start(Workload("demo", (quits, silent)), tmp_path) as execution:
        with pytest.raises(ExecutorError, match=r"^quits/0 on local exited \(failed, exit 4\) before it was ready"):
            execution.wait_ready("quits")
        with pytest.raises(ExecutorError, match=r"^silent/0 on local not ready \(log line 'up'\) within 1 s"):
            execution.wait_ready("silent")


def test_an_elastic_role_goes_on_after_losing_the_nodes_it_tolerates(tmp_path):
    # node 2 fails at once; 0 and 1 finish: an elastic role (min 2 of 3) is not stopped by the loss...
    role = Role("worker", ("{python}", "-c", "import sys, time; sys.exit(3) if {node_index} == 2 else time.sleep(1)"),
                nodes=3, min_nodes=2)
    with LocalExecutor(grace_s=1).start(Workload("demo", (role,)), tmp_path) as execution:
        outcome = execution.wait(30)
    assert [s.state for s in outcome.nodes] == [NodeState.SUCCEEDED, NodeState.SUCCEEDED, NodeState.FAILED]
    assert not outcome.succeeded
    # ... but a second loss is one too many: the last node is stopped at once
    role = Role("worker", ("{python}", "-c", "import sys, time; sys.exit(3) if {node_index} else time.sleep(60)"),
                nodes=3, min_nodes=2)
    started = time.monotonic()
    with LocalExecutor(grace_s=1).start(Workload("demo", (role,)), tmp_path / "two") as execution:
        outcome = execution.wait(60)
    assert time.monotonic() - started < 20 and outcome.nodes[0].state is NodeState.KILLED
    with pytest.raises(ValueError, match="min_nodes must be between 1 and nodes 3"):
        Role("worker", ("true",), nodes=3, min_nodes=4)


def test_isolating_a_local_node_kills_it_and_the_shared_volume_reads_from_any_node(tmp_path):
    role = Role("worker", ("{python}", "-c", "import sys, time; open(sys.argv[1], 'a').write('x'); time.sleep(60)",
                           "{volume[checkpoints]}/shared.txt"), nodes=2, min_nodes=1)
    workload = Workload("demo", (role,), volumes=(VolumePurpose.CHECKPOINTS, VolumePurpose.RESULTS))
    with LocalExecutor(grace_s=1).start(workload, tmp_path) as execution:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if execution.read_shared("shared.txt") == b"xx":
                    break
            except ExecutorError:
                pass
            time.sleep(0.05)
        execution.isolate_node("worker", 1, restore_after_s=1.0)
        outcome = execution.wait(1.0)
        with pytest.raises(ExecutorError, match="cannot read .*missing.txt"):
            execution.read_shared("missing.txt")
    assert outcome.timed_out  # node 0 was left running: the loss of node 1 is tolerated
    assert outcome.nodes[1].state is NodeState.KILLED and outcome.nodes[1].exit_code == -9


def test_link_down_script_finds_the_interface_proves_permission_and_cuts_detached():
    from dcforge.executors.hosts import link_down_script

    script = link_down_script("10.251.3.12", 20)
    assert "ip -o addr show to 10.251.3.12" in script
    lines = script.splitlines()
    assert lines[2] == 'ip link set dev "$dev" up || exit 3'  # fails without CAP_NET_ADMIN, before anything is cut
    assert lines[3].startswith("setsid sh -c 'sleep 0.5; ip link set dev \"$0\" down; sleep 20; ip link set dev")
    assert lines[3].endswith('"$dev" </dev/null >/dev/null 2>&1 &')


def test_a_client_role_reaches_a_server_role_with_the_workloads_secret(tmp_path):
    """`{role_address[ROLE]}:{role_port[ROLE][NAME]}` is another role's endpoint; the secrets volume holds the
    workload's files 0600 in a private folder outside the run directory, gone after stop; `wait(roles=...)`
    returns when the client is done while the server still runs."""
    serve = ("import http.server, sys\n"
             "class H(http.server.BaseHTTPRequestHandler):\n"
             "    def do_GET(self):\n"
             "        self.send_response(200); self.end_headers(); self.wfile.write(b'hello')\n"
             "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")
    fetch = ("import os, stat, sys, urllib.request\n"
             "key = open(sys.argv[2], 'rb').read()\n"
             "mode = stat.S_IMODE(os.stat(sys.argv[2]).st_mode)\n"
             "body = urllib.request.urlopen(sys.argv[1], timeout=10).read()\n"
             "open(sys.argv[3], 'w').write(f'{{body.decode()}} {{key == b\"s3cret\"}} {{mode:o}}')\n")
    server = Role("server", ("{python}", "-c", serve, "{port[http]}"), ports=("http",),
                  readiness=Readiness(port="http", timeout_s=20))
    client = Role("client", ("{python}", "-c", fetch, "http://{role_address[server]}:{role_port[server][http]}/",
                             "{volume[secrets]}/api-key", "{volume[results]}/got.txt"))
    workload = Workload("serve", (server, client), volumes=(VolumePurpose.RESULTS, VolumePurpose.SECRETS),
                        secrets={"api-key": b"s3cret"})
    with LocalExecutor().start(workload, tmp_path) as execution:
        secrets_dir = execution._placements[0].volumes["secrets"]
        assert not secrets_dir.startswith(str(tmp_path))
        execution.wait_ready("server")
        outcome = execution.wait(30, roles=["client"])
        states = {s.role: s.state for s in outcome.nodes}
        assert states == {"server": NodeState.RUNNING, "client": NodeState.SUCCEEDED}
        assert execution.read_result("client", 0, "got.txt") == b"hello True 600"
        with pytest.raises(KeyError, match="no role 'loader'"):
            execution.wait(1, roles=["loader"])
    assert not Path(secrets_dir).exists()
    assert b"s3cret" not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_a_workload_needs_a_secrets_volume_for_its_secrets_and_plain_names():
    role = Role("worker", ("true",))
    with pytest.raises(ValueError, match="has secrets but no secrets volume"):
        Workload("w", (role,), secrets={"key": b"x"})
    with pytest.raises(ValueError, match="must be a plain file name"):
        Workload("w", (role,), volumes=(VolumePurpose.SECRETS,), secrets={"../key": b"x"})


def test_http_readiness_waits_for_a_200_and_read_log_shows_the_log_so_far(tmp_path):
    """A server that binds at once but answers /ready 503 for its first second is not ready until it answers 200;
    read_log returns what the node printed so far."""
    serve = ("import http.server, sys, time\n"
             "start = time.monotonic()\n"
             "class H(http.server.BaseHTTPRequestHandler):\n"
             "    def do_GET(self):\n"
             "        self.send_response(200 if time.monotonic() - start > 1.0 else 503); self.end_headers()\n"
             "    def log_message(self, *args): pass\n"
             "print('listening', flush=True)\n"
             "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")
    server = Role("server", ("{python}", "-c", serve, "{port[http]}"), ports=("http",),
                  readiness=Readiness(port="http", http_path="/ready", timeout_s=20))
    with LocalExecutor().start(Workload("serve", (server,)), tmp_path) as execution:
        started = time.monotonic()
        execution.wait_ready("server")
        assert time.monotonic() - started >= 0.9
        assert execution.read_log("server", 0) == "listening\n"
    with pytest.raises(ValueError, match="needs a port and a leading '/'"):
        Readiness(http_path="/ready")


def test_the_local_executor_refuses_replacements_in_one_line(tmp_path):
    """Replacing a lost node is a Kubernetes Job's (backoffLimit); here it would silently not happen."""
    role = Role("train", ("true",), replacements=1)
    with pytest.raises(ExecutorError, match="replacement.*which the local executor cannot provide"):
        LocalExecutor().start(Workload("failover", (role,)), tmp_path)
