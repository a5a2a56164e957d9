"""`dcforge provision` pieces that need no Ansible run: recap parsing, live lines, summary, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from dcforge.errors import ConfigError
from dcforge.provision import PlaybookRun, inventory_for, progress_line, summarise_stats, summary_table

STATS = {
    "ok": {"a": 10, "b": 3}, "changed": {"a": 2}, "failures": {"b": 1}, "dark": {"c": 1},
    "skipped": {"a": 4}, "rescued": {}, "ignored": {}, "processed": {"a": 1, "b": 1, "c": 1},
}


def test_recap_becomes_one_summary_per_host():
    hosts = summarise_stats(STATS)
    assert [hosts[name].status for name in "abc"] == ["changed", "failed", "unreachable"]
    assert (hosts["a"].ok, hosts["a"].changed, hosts["a"].skipped) == (10, 2, 4)
    run = PlaybookRun(rc=2, status="failed", hosts=hosts)
    assert run.failed_hosts == ["b", "c"] and not run.succeeded
    assert run.changed == {"a": 2}
    assert summarise_stats(None) == {}


def test_summary_table_lists_every_host_and_status():
    console = Console(file=io.StringIO(), width=160)
    console.print(summary_table(PlaybookRun(rc=2, status="failed", hosts=summarise_stats(STATS)), "provision x"))
    text = console.file.getvalue()
    for expected in ("unreachable", "failed", "changed", "provision x"):
        assert expected in text
    assert len([line for line in text.splitlines() if line.startswith("│")]) == 3


def test_live_progress_lines():
    changed = {"event": "runner_on_ok", "event_data": {"host": "n1", "task": "Install it", "role": "nccl",
                                                       "res": {"changed": True}}}
    failed = {"event": "runner_on_failed", "event_data": {"host": "n2", "task": "Refuse it", "role": "preflight",
                                                          "res": {"msg": "preflight refused n2: too old\nmore"}}}
    assert progress_line(changed).split() == ["changed", "n1", "nccl", ":", "Install", "it"]
    assert progress_line(failed).endswith("preflight : Refuse it -- preflight refused n2: too old")
    assert progress_line({"event": "runner_on_skipped", "event_data": {}}) is None
    ignored = {"event": "runner_on_failed", "event_data": {"host": "n", "ignore_errors": True, "res": {}}}
    assert progress_line(ignored) is None


def test_unknown_inventory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no Ansible inventory for environment 'staging'"):
        inventory_for("staging")
    with pytest.raises(ConfigError, match="no Ansible inventory"):
        inventory_for("dev", tmp_path / "missing")
    assert inventory_for("dev") == Path(inventory_for("dev"))


def test_cli_reports_bad_environment_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from dcforge.cli import app

    result = CliRunner().invoke(app, ["provision", "--env", "dev", "--inventory", str(tmp_path / "missing")])
    # `dcforge.cli.main` turns this ConfigError into one line and exit 2.
    assert isinstance(result.exception, ConfigError)
    assert "no Ansible inventory for environment 'dev'" in str(result.exception)


def test_provision_refuses_a_generated_inventory_that_differs_from_the_environment_file(env_file):
    """Hosts and pool facts come from the generated inventory: provisioning from a stale one is bad input."""
    from typer.testing import CliRunner

    from dcforge.cli import app

    path = env_file("dev", replace={"nodes: [dev-gpu-01, dev-gpu-02]": "nodes: [dev-gpu-01, dev-gpu-03]"})
    result = CliRunner().invoke(app, ["provision", "--env-file", str(path)])
    assert isinstance(result.exception, ConfigError)
    assert "hosts.yml" in str(result.exception) and "run `dcforge inventory --env dev` first" in str(result.exception)
    assert "dcforge.yml" not in str(result.exception)  # versions and pool facts are unchanged


def test_an_unchanged_copy_of_the_environment_file_matches_the_inventory(env_file):
    from dcforge.provision import refuse_stale_inventory
    from dcforge.spec import load_environment

    loaded = load_environment(path=env_file("prod"))  # another path, so other header comments: same content
    refuse_stale_inventory(loaded, inventory_for("prod"))
