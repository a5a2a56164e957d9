"""`dcforge up|preview` (Automation API driver): everything that happens before the Pulumi CLI takes over.

The CLI is not installed on these machines, which is exactly the case users hit first: one clear line, exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcforge import deploy
from dcforge.errors import ConfigErrors, DcforgeError
from dcforge.paths import STACKS_DIR


@pytest.fixture
def no_pulumi(monkeypatch, tmp_path):
    """A PATH and home without any Pulumi CLI."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PULUMI_HOME", raising=False)


def test_missing_cli_is_one_line_telling_how_to_install(no_pulumi):
    with pytest.raises(DcforgeError) as raised:
        deploy.find_pulumi_cli()
    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert "\n" not in message and "get.pulumi.com" in message and "not installed" in message


def test_cli_is_found_on_path_or_in_the_installer_home(no_pulumi, tmp_path, monkeypatch):
    home = tmp_path / "home" / ".pulumi" / "bin"
    home.mkdir(parents=True)
    (home / "pulumi").write_text("#!/bin/sh\n")
    (home / "pulumi").chmod(0o755)
    assert deploy.find_pulumi_cli(home=tmp_path / "home" / ".pulumi") == home / "pulumi"
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "pulumi").write_text("#!/bin/sh\n")
    (on_path / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert deploy.find_pulumi_cli() == on_path / "pulumi"


def test_up_without_cli_fails_before_touching_any_backend(no_pulumi, tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path / 'state'}")
    with pytest.raises(DcforgeError, match="Pulumi CLI is not installed"):
        deploy.up("dev", preview=True)
    assert not (tmp_path / "state").exists()


def test_a_bad_spec_fails_before_looking_for_the_cli(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    text = (STACKS_DIR / "Pulumi.dev.yaml").read_text().replace("10.96.0.0/12", "10.244.0.0/20")
    (stacks / "Pulumi.dev.yaml").write_text(text)

    def cli_must_not_be_needed() -> Path:
        raise AssertionError("the CLI was looked up for an invalid spec")

    with pytest.raises(ConfigErrors, match=r"dcforge:network.serviceCidr: 10.244.0.0/20 overlaps podCidr"):
        deploy.up("dev", stacks_dir=stacks, find_cli=cli_must_not_be_needed)


def test_backend_defaults_to_a_state_folder_beside_the_stacks(tmp_path, monkeypatch):
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    stacks = tmp_path / "repo" / "stacks"
    stacks.mkdir(parents=True)
    assert deploy.default_backend_url(stacks) == f"file://{tmp_path / 'repo' / '.pulumi-state'}"
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://bucket/state")
    assert deploy.default_backend_url(stacks) == "s3://bucket/state"


def test_backend_falls_back_to_the_home_folder_when_the_checkout_is_read_only(tmp_path, monkeypatch):
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    stacks = tmp_path / "repo" / "stacks"
    stacks.mkdir(parents=True)
    # Root may write anywhere, so the read-only checkout is simulated at the permission check itself.
    real_access = os.access
    monkeypatch.setattr(deploy.os, "access", lambda path, mode: False if Path(path) == stacks.parent
                        else real_access(path, mode))
    assert deploy.default_backend_url(stacks) == f"file://{Path('~/.dcforge/pulumi').expanduser()}"


def test_the_local_backend_needs_a_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    with pytest.raises(DcforgeError, match="PULUMI_CONFIG_PASSPHRASE"):
        deploy.up("dev", backend_url=f"file://{tmp_path / 'state'}", find_cli=lambda: tmp_path / "bin" / "pulumi")


@pytest.mark.parametrize("command", ["up", "preview"])
def test_cli_commands_exit_2_with_the_install_hint(no_pulumi, command):
    from dcforge.cli import app

    result = CliRunner().invoke(app, [command, "--env", "dev"])
    assert isinstance(result.exception, DcforgeError)
    assert "get.pulumi.com" in str(result.exception)
