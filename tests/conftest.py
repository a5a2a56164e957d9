"""Shared fixtures: environment files written from the shipped ones with targeted edits."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STACKS = REPO / "stacks"


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
