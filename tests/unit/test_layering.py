"""Layers import downwards only (COMMON.md and README "Layout": spec, errors, findings, workloads, loadtests ->
harness -> executors -> steps -> placement -> checks -> runner/cli): the spec knows neither the harness nor the
checks; the runner no single check; no check imports another; only placement imports concrete executors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


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


# --- The import graph, read from the source (ast): every import statement counts, in function bodies and
# TYPE_CHECKING blocks as much as at the top, so a lazy import cannot hide an edge between layers.

DCFORGE = Path(__file__).resolve().parents[2] / "dcforge"
CONCRETE_EXECUTORS = {"dcforge.executors.local", "dcforge.executors.hosts", "dcforge.executors.kubernetes"}
"""The executors that place work somewhere; the rest of dcforge.executors is their shared vocabulary."""
ENTRY_POINTS = {"dcforge.cli", "dcforge.remediation"}
"""Commands that talk to the cluster's API themselves (clean up runs, taint nodes), not through a check."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(DCFORGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def dcforge_modules() -> dict[str, Path]:
    return {module_name(path): path for path in DCFORGE.rglob("*.py")}


def imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The dcforge modules one import statement loads by name (`from package import submodule` is the submodule,
    not the package's own code)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join([*package, *([node.module] if node.module else [])])
        submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        names = submodules + ([base] if len(submodules) < len(node.names) else [])
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("dcforge") and name != module:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = dcforge_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported(module, path, node, modules)
    return graph


GRAPH = import_graph()


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def edges_breaking(rule) -> list[str]:
    return sorted(f"{source} -> {target}" for source, targets in GRAPH.items() for target in targets
                  if rule(source, target))


def test_no_check_imports_another_check():
    """Checks share through a lower layer (steps, placement), never through each other; the registry
    (`dcforge.checks`) imports none of them by name."""
    def check_imports_check(source: str, target: str) -> bool:
        return (in_package(source, "dcforge.checks") and in_package(target, "dcforge.checks")
                and target.partition("dcforge.checks.")[2].split(".")[0]
                != source.partition("dcforge.checks.")[2].split(".")[0])
    assert edges_breaking(check_imports_check) == []


def test_steps_import_only_the_base_types_of_executors():
    assert edges_breaking(lambda source, target: in_package(source, "dcforge.steps")
                          and in_package(target, "dcforge.executors") and target != "dcforge.executors.base") == []


def test_steps_know_neither_placement_nor_checks():
    assert edges_breaking(lambda source, target: in_package(source, "dcforge.steps")
                          and (in_package(target, "dcforge.placement") or in_package(target, "dcforge.checks"))) == []


def test_only_placement_imports_concrete_executors():
    assert edges_breaking(lambda source, target: target in CONCRETE_EXECUTORS
                          and not in_package(source, "dcforge.placement")
                          and not in_package(source, "dcforge.executors") and source not in ENTRY_POINTS) == []


def test_placement_imports_no_check():
    assert edges_breaking(lambda source, target: in_package(source, "dcforge.placement")
                          and in_package(target, "dcforge.checks")) == []


def test_the_report_imports_no_check_step_placement_or_remediation():
    higher = ("dcforge.checks", "dcforge.steps", "dcforge.placement", "dcforge.remediation")
    assert edges_breaking(lambda source, target: in_package(source, "dcforge.report")
                          and any(in_package(target, layer) for layer in higher)) == []


def test_no_import_cycle_among_dcforge_modules():
    assert cycles(GRAPH) == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_scan_sees_function_local_and_type_checking_imports(tmp_path):
    """The rules above would be empty promises if the scan missed the imports checks hide in function bodies."""
    source = tmp_path / "dcforge" / "checks" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dcforge.checks.a import A\n"
                      "def run():\n    from .b import B\n    import dcforge.executors.local\n")
    modules = {name: source for name in ("dcforge.checks.probe", "dcforge.checks.a", "dcforge.checks.b",
                                         "dcforge.executors.local", "dcforge.executors")}
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= imported("dcforge.checks.probe", source, node, modules)
    assert found == {"dcforge.checks.a", "dcforge.checks.b", "dcforge.executors.local"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
