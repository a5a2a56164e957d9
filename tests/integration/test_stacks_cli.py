"""`dcforge up|preview` as a user runs them: without the Pulumi engine one line, exit 2, no traceback; with a
stand-in CLI (and a stand-in Kubernetes provider beside it, which dcforge only looks for) the Automation API path up
to the engine's answer. HOME and DCFORGE_PULUMI_HOME point into the test's folder, so an engine built on this
machine by `make pulumi-tools` is not the one found."""

from __future__ import annotations

import json
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
    env.pop("DCFORGE_PULUMI_HOME", None)
    log = tmp_path / "out.log"
    code = run_bounded([sys.executable, "-m", "dcforge.cli", command, "--env", "dev"], timeout_s=TIMEOUT_S,
                       env=env, log_path=log)
    output = log.read_text()
    assert code == 2, output
    assert output.strip().count("\n") == 0, output
    assert output.startswith("error: no Pulumi engine found") and "make pulumi-tools" in output
    assert "Traceback" not in output


def test_a_bad_environment_name_is_reported_before_pulumi_is_needed(tmp_path):
    log = tmp_path / "out.log"
    code = run_bounded([sys.executable, "-m", "dcforge.cli", "preview", "--env", "nope"], timeout_s=TIMEOUT_S,
                       env={**os.environ, "PATH": str(tmp_path / "bin")}, log_path=log)
    output = log.read_text()
    assert code == 2 and "no environment 'nope': expected one of" in output and "Traceback" not in output


FAKE_PULUMI = """#!/bin/sh
echo "$* | backend=$PULUMI_BACKEND_URL" >> "{log}"
case "$1" in
  version) echo "v3.210.0" ;;
  *) echo "error: could not reach the backend" >&2; exit 255 ;;
esac
"""


def stand_in_engine(tmp_path, script: str, calls) -> tuple:
    """A folder with the stand-in `pulumi` and a stand-in `pulumi-resource-kubernetes` beside it (never run: the
    stand-in CLI runs no program), and the environment that finds them rather than any engine of this machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(script.format(log=calls))
    (bin_dir / "pulumi-resource-kubernetes").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "DCFORGE_PULUMI_HOME": str(tmp_path / "no-engine-built"), "PULUMI_CONFIG_PASSPHRASE": ""}
    env.pop("PULUMI_HOME", None)
    return bin_dir, env


def test_a_failing_pulumi_run_is_exit_1_naming_the_stack(tmp_path):
    """A stand-in CLI that fails after `pulumi version`: the Automation API path up to Pulumi's own error."""
    calls = tmp_path / "calls.log"
    _, env = stand_in_engine(tmp_path, FAKE_PULUMI, calls)
    backend = f"file://{tmp_path / 'state'}"
    env["PULUMI_BACKEND_URL"] = backend
    log = tmp_path / "out.log"
    code = run_bounded([sys.executable, "-m", "dcforge.cli", "preview", "--env", "dev"], timeout_s=TIMEOUT_S,
                       env=env, log_path=log)
    output = log.read_text()
    assert code == 1, output
    assert "preview of stack 'dev' failed" in output and "could not reach the backend" in output
    assert "Traceback" not in output
    lines = calls.read_text().splitlines()
    assert lines[0] == f"version | backend={backend}"
    assert any("stack select --stack dev" in line and line.endswith(backend) for line in lines[1:]), lines


FAKE_PULUMI_OK = """#!/bin/sh
echo "$*" >> "{log}"
[ "$1" = --non-interactive ] && shift
case "$1 $2" in
  "version "*) echo "v3.210.0" ;;
  "up "*) echo "Updating (tiny): 3 created" ;;
  "stack output") echo "{{}}" ;;
  "stack history") echo '[{{"kind": "update", "startTime": "2026-11-30T23:00:00.000Z", "message": "",
    "environment": {{}}, "config": {{}}, "result": "succeeded", "resourceChanges": {{"create": 3}}}}]' ;;
esac
exit 0
"""


@pytest.mark.parametrize("slo, flags, code, verdict", [
    (">= 1", [], 0, "acceptance passed"),
    (">= 100000", [], 1, "acceptance failed"),
    (">= 100000", ["--no-accept"], 0, None),
], ids=["accepted", "acceptance-fails", "no-accept"])
def test_up_runs_the_acceptance_after_a_successful_update(tmp_path, slo, flags, code, verdict):
    """A stand-in CLI whose update succeeds: the Automation API path to Pulumi's answer, then the real acceptance
    of the environment; one summary line and one exit code cover both."""
    from dcforge.paths import STACKS_DIR

    stacks = tmp_path / "stacks"
    stacks.mkdir()
    calls = tmp_path / "calls.log"
    _, env = stand_in_engine(tmp_path, FAKE_PULUMI_OK, calls)
    local = (STACKS_DIR / "Pulumi.local.yaml").read_text()
    (stacks / "Pulumi.tiny.yaml").write_text(local[:local.index("  dcforge:acceptance:")] + (
        f"  dcforge:acceptance:\n    checks: [system]\n    slos: {{system.cpu_count: '{slo}'}}\n"))
    env.update(PULUMI_BACKEND_URL=f"file://{tmp_path / 'state'}", DCFORGE_STACKS_DIR=str(stacks))
    log = tmp_path / "out.log"
    returned = run_bounded([sys.executable, "-m", "dcforge.cli", "up", "--env", "tiny", *flags], timeout_s=TIMEOUT_S,
                           env=env, log_path=log, cwd=tmp_path)
    output = log.read_text()
    assert returned == code, output
    assert "dcforge: updated stack 'tiny'" in output and "3 create" in output and "Traceback" not in output
    assert any(" up --yes --skip-preview " in line for line in calls.read_text().splitlines())
    reports = tmp_path / "reports" / "tiny"
    if verdict is None:
        assert not reports.exists() and "running its acceptance" not in output
    else:
        assert f"dcforge up --env tiny: update succeeded, {verdict}" in output
        (report_dir,) = reports.iterdir()
        assert json.loads((report_dir / "report.json").read_text())["status"] == ("pass" if code == 0 else "fail")
