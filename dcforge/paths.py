"""Where the parts of a dcforge checkout are: computed once, from this package's location.

dcforge runs from its checkout (an editable install): the stacks, playbooks and workloads it drives live beside
the `dcforge` package, not inside it.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = REPO_ROOT / "stacks"
PLAYBOOKS_DIR = REPO_ROOT / "playbooks"
WORKLOADS_DIR = REPO_ROOT / "workloads"
