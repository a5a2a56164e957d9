"""`dcforge up|preview` as a user runs them on a machine without the Pulumi CLI: one line, exit 2, no traceback."""

from __future__ import annotations

import os
import sys

import pytest

from dcforge.harness.processes import run_bounded

pytestmark = pytest.mark.slow
TIMEOUT_S = 120


@pytest.mark.parametrize("command", ["preview", "up"])
def test_without_the_pulumi_cli_the_user_is_told_how_to_install_it(command, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "bin"), "HOME": str(tmp_path / "home")}
    env.pop("PULUMI_HOME", None)
    log = tmp_path / "out.log"
    code = run_bounded([sys.executable, "-m", "dcforge.cli", command, "--env", "dev"], timeout_s=TIMEOUT_S,
                       env=env, log_path=log)
    output = log.read_text()
    assert code == 2, output
    assert output.strip().count("\n") == 0, output
    assert "Pulumi CLI is not installed" in output and "get.pulumi.com" in output
    assert "Traceback" not in output


def test_a_bad_environment_name_is_reported_before_pulumi_is_needed(tmp_path):
    log = tmp_path / "out.log"
    code = run_bounded([sys.executable, "-m", "dcforge.cli", "preview", "--env", "nope"], timeout_s=TIMEOUT_S,
                       env={**os.environ, "PATH": str(tmp_path / "bin")}, log_path=log)
    output = log.read_text()
    assert code == 2 and "no environment 'nope'" in output and "Traceback" not in output
