"""`dcforge preview|up|destroy` (Automation API driver): everything that happens before the Pulumi engine takes over.

Without the engine of `make pulumi-tools` (or a Pulumi CLI on PATH) the user gets one line saying how to build it,
exit 2. The engine's own runs are in tests/e2e/test_pulumi_engine.py (opt-in: `make e2e-pulumi`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcforge import deploy, pulumi_engine
from dcforge.errors import ConfigErrors, DcforgeError
from dcforge.paths import STACKS_DIR


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_pulumi(monkeypatch, tmp_path):
    """A PATH, home and engine cache without any Pulumi CLI."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(pulumi_engine.PULUMI_HOME_ENV, str(tmp_path / "engine-cache"))
    monkeypatch.delenv("PULUMI_HOME", raising=False)


def test_missing_engine_is_one_line_telling_how_to_build_it(no_pulumi, tmp_path):
    with pytest.raises(DcforgeError) as raised:
        pulumi_engine.find_engine()
    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert "\n" not in message and "make pulumi-tools" in message
    assert str(tmp_path / "engine-cache" / "bin") in message


def test_the_built_engine_wins_over_a_cli_on_path(no_pulumi, tmp_path, monkeypatch):
    on_path = executable(tmp_path / "bin" / "pulumi")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert pulumi_engine.find_engine().cli == on_path
    built = executable(tmp_path / "engine-cache" / "bin" / "pulumi")
    engine = pulumi_engine.find_engine()
    assert engine.cli == built and engine.root == tmp_path / "engine-cache"
    installer = executable(tmp_path / "home" / ".pulumi" / "bin" / "pulumi")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    built.unlink()
    assert pulumi_engine.find_engine().cli == installer


def test_versions_come_from_the_build_record_and_the_python_packages(no_pulumi, tmp_path):
    engine = pulumi_engine.Engine(executable(tmp_path / "engine-cache" / "bin" / "pulumi"))
    (tmp_path / "engine-cache" / "versions").write_text(
        "pulumi=v3.274.0\npulumi-resource-kubernetes=v4.0.0-20260115033456-f47bc2d6f199\ngo=go1.26.8\n")
    versions = engine.versions()
    assert versions["pulumi"] == "v3.274.0"
    assert versions["pulumi-resource-kubernetes"] == "v4.0.0-20260115033456-f47bc2d6f199"
    from importlib.metadata import version
    assert versions["python:pulumi_kubernetes"] == version("pulumi_kubernetes")


def test_an_engine_without_the_kubernetes_provider_is_one_line_telling_how_to_build_it(no_pulumi, tmp_path):
    engine = pulumi_engine.Engine(executable(tmp_path / "engine-cache" / "bin" / "pulumi"))
    with pytest.raises(DcforgeError) as raised:
        engine.kubernetes_provider()
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)
    assert "pulumi-resource-kubernetes" in str(raised.value) and "make pulumi-tools" in str(raised.value)
    cached = executable(tmp_path / "home" / ".pulumi" / "plugins" / "resource-kubernetes-v4.34.2"
                        / "pulumi-resource-kubernetes")
    assert engine.kubernetes_provider() == cached
    built = executable(tmp_path / "engine-cache" / "bin" / "pulumi-resource-kubernetes")
    assert engine.kubernetes_provider() == built


def test_up_without_engine_fails_before_touching_any_backend(no_pulumi, tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path / 'state'}")
    with pytest.raises(DcforgeError, match="make pulumi-tools"):
        deploy.run("preview", "dev")
    assert not (tmp_path / "state").exists()


def test_a_bad_spec_fails_before_looking_for_the_engine(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    text = (STACKS_DIR / "Pulumi.dev.yaml").read_text().replace("10.96.0.0/12", "10.244.0.0/20")
    (stacks / "Pulumi.dev.yaml").write_text(text)

    def engine_must_not_be_needed():
        raise AssertionError("the engine was looked up for an invalid spec")

    with pytest.raises(ConfigErrors, match=r"dcforge:network.serviceCidr: 10.244.0.0/20 overlaps podCidr"):
        deploy.run("up", "dev", stacks_dir=stacks, find=engine_must_not_be_needed)


def test_destroy_of_an_unknown_environment_names_the_file(tmp_path):
    with pytest.raises(DcforgeError, match=r"Pulumi.nope.yaml: no environment 'nope': expected one of"):
        deploy.run("destroy", "nope", stacks_dir=tmp_path)


def test_backend_defaults_to_a_state_folder_beside_the_stacks(tmp_path, monkeypatch):
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    stacks = tmp_path / "repo" / "stacks"
    stacks.mkdir(parents=True)
    assert deploy.default_backend_url(stacks) == f"file://{tmp_path / 'repo' / '.pulumi-state'}"
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://bucket/state")
    assert deploy.default_backend_url(stacks) == "s3://bucket/state"


def test_the_state_folder_is_ignored_by_git():
    ignored = (STACKS_DIR.parent / ".gitignore").read_text().splitlines()
    assert f"{deploy.STATE_DIR_NAME}/" in ignored


def test_backend_falls_back_to_the_home_folder_when_the_checkout_is_read_only(tmp_path, monkeypatch):
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    stacks = tmp_path / "repo" / "stacks"
    stacks.mkdir(parents=True)
    # Root may write anywhere, so the read-only checkout is simulated at the permission check itself.
    real_access = os.access
    monkeypatch.setattr(deploy.os, "access", lambda path, mode: False if Path(path) == stacks.parent
                        else real_access(path, mode))
    assert deploy.default_backend_url(stacks) == f"file://{Path('~/.dcforge/pulumi').expanduser()}"


def test_the_passphrase_provider_needs_a_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    engine = pulumi_engine.Engine(executable(tmp_path / "bin" / "pulumi"))
    executable(tmp_path / "bin" / "pulumi-resource-kubernetes")
    options = deploy.DeployOptions(backend_url=f"file://{tmp_path / 'state'}")
    with pytest.raises(DcforgeError, match="PULUMI_CONFIG_PASSPHRASE"):
        deploy.run("preview", "dev", options, find=lambda: engine)
    assert not (tmp_path / "state").exists()


def test_the_engine_works_on_a_copy_of_the_environment_file_that_keeps_its_own_keys(tmp_path):
    """The engine writes the passphrase salt into the stack config file; the environment file is never touched."""
    workspace = deploy.prepare_workspace(STACKS_DIR, STACKS_DIR / "Pulumi.dev.yaml", tmp_path / "ws")
    copy = workspace / "Pulumi.dev.yaml"
    assert copy.read_text() == (STACKS_DIR / "Pulumi.dev.yaml").read_text().rstrip("\n") + "\n"
    assert (workspace / "Pulumi.yaml").read_text() == (STACKS_DIR / "Pulumi.yaml").read_text()
    copy.write_text(copy.read_text() + "encryptionsalt: v1:abc:def\n")
    deploy.prepare_workspace(STACKS_DIR, STACKS_DIR / "Pulumi.dev.yaml", workspace)
    assert copy.read_text().endswith("\nencryptionsalt: v1:abc:def\n")
    assert copy.read_text().count("encryptionsalt") == 1


@pytest.mark.parametrize("command", ["up", "preview", "destroy"])
def test_cli_commands_exit_2_with_the_build_hint(no_pulumi, command):
    from dcforge.cli import app

    result = CliRunner().invoke(app, [command, "--env", "dev"])
    assert isinstance(result.exception, DcforgeError)
    assert result.exception.exit_code == 2 and "make pulumi-tools" in str(result.exception)


def test_engine_events_give_the_plan_per_type_and_the_failed_resources_reason():
    """On the engine's own event stream (tests/unit/pulumi_events/README.md)."""
    import json

    from pulumi.automation.events import EngineEvent

    events = deploy.EngineEvents()
    sample = Path(__file__).parent / "pulumi_events" / "preview_without_provider.jsonl"
    for line in sample.read_text().splitlines():
        events(EngineEvent.from_json(json.loads(line)))
    assert events.plan() == {kind: {"create": 1} for kind in (
        "dcforge:index:Acceptance", "dcforge:index:ClusterNetwork", "dcforge:index:DistributedStorage",
        "dcforge:index:SecurityBaseline", "pulumi:pulumi:Stack")}
    reason = deploy.failure_reason(events, "error: update failed")
    assert reason == ("pulumi:providers:kubernetes default_4_34_2: no resource plugin 'pulumi-resource-kubernetes' "
                      "found in the workspace at version v4.34.2 or on your $PATH")
