"""Shared fixtures: environment files written from the shipped ones with targeted edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcforge.paths import STACKS_DIR as STACKS


@pytest.fixture
def env_file(tmp_path):
    """`env_file("prod", replace={"old": "new"})` -> path of an edited copy of stacks/Pulumi.prod.yaml."""

    def make(base: str = "prod", replace: dict[str, str] | None = None, text: str | None = None,
             name: str | None = None) -> Path:
        content = text if text is not None else (STACKS / f"Pulumi.{base}.yaml").read_text()
        for old, new in (replace or {}).items():
            assert old in content, f"test setup: {old!r} not in Pulumi.{base}.yaml"
            content = content.replace(old, new)
        path = tmp_path / f"Pulumi.{name or base}.yaml"
        path.write_text(content)
        return path

    return make


@pytest.fixture(autouse=True)
def main_thread_event_loop():
    """Give every test a usable main-thread event loop.

    `asyncio.run()` (used by async server tests) leaves the main thread with no loop set, after which
    `asyncio.get_event_loop()` raises; Pulumi's mocks call exactly that, so without this the stack tests would
    depend on which tests ran before them.
    """
    import asyncio

    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield
