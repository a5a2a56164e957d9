"""The playbooks parse with every inventory and pass ansible-lint's production profile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcforge.provision import PLAYBOOKS_DIR

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOKS_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
       "NO_COLOR": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize("inventory", ["local", "dev", "prod"])
def test_playbooks_pass_syntax_check(inventory):
    for playbook in ("site.yml", "gpu-node.yml", "verify.yml"):
        completed = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i",
                                    f"inventories/{inventory}", playbook], cwd=PLAYBOOKS_DIR, env=ENV,
                                   capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stdout + completed.stderr


def test_ansible_lint_production_profile_is_clean():
    completed = subprocess.run([str(BIN / "ansible-lint"), "--nocolor", "--profile", "production"],
                               cwd=PLAYBOOKS_DIR, env=ENV, capture_output=True, text=True, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output
