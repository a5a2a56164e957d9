"""Layers import downwards only: the spec knows neither the harness nor the checks; the runner no single check."""

from __future__ import annotations

import subprocess
import sys


def modules_loaded_by(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_loading_and_validating_an_environment_imports_no_harness_and_no_check():
    loaded = modules_loaded_by("from dcforge.spec import load_environment; load_environment('prod')")
    assert "dcforge.spec.validation" in loaded
    assert not {m for m in loaded if m.startswith(("dcforge.harness", "dcforge.checks"))}


def test_the_runner_imports_no_specific_check():
    loaded = modules_loaded_by("import dcforge.harness.runner")
    assert not {m for m in loaded if m.startswith("dcforge.checks.")}


def test_bad_check_settings_name_the_key_through_the_registry(env_file):
    import pytest

    from dcforge.checks import CATALOG
    from dcforge.errors import ConfigErrors
    from dcforge.spec import load_environment

    edit = {"        durationS: 18\n        promptTokens": "        durationS: -1\n        promptTokens"}
    path = env_file("local", replace=edit)
    with pytest.raises(ConfigErrors) as caught:
        load_environment(path=path, checks=CATALOG)
    (error,) = caught.value.errors
    assert error.key == "dcforge:acceptance.settings.inference.durationS"
    assert "greater than 0" in str(error) and path.name in error.file
