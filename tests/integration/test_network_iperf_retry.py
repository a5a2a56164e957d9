"""The network check's pair command with the real iperf3: a client whose server is not listening yet keeps retrying
and fails at the end of its time, even though iperf3 3.12 with --json exits 0 on "Connection refused"."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from dcforge.checks.network import IPERF_PORT, pair_command

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("iperf3") is None,
                                                   reason="iperf3 is missing (make system-deps installs it)")]


def test_a_refused_client_retries_and_fails_instead_of_passing_with_an_error_json(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = pair_command(1, 2)[2].format(node_index=1, node_address="127.0.0.1", leader_address="127.0.0.1",
                                          port={IPERF_PORT: port}, volume={"results": str(tmp_path)})
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Connection refused" in (tmp_path / "iperf.json").read_text()
