"""DCGM diagnostics: run `dcgmi diag -r LEVEL -j` and parse its JSON.

Layouts read (tests/unit/real_logs/dcgm/ and tests/unit/gpu_outputs/):
- DCGM 2.x/3.x: `{"DCGM GPU Diagnostic": {"test_categories": [{"category", "tests": [{"name", "results": [...]}]}]}}`;
  a result carries `gpu_ids` (a GPU id, or a comma list for the node-wide Deployment tests) or, in some 3.x
  releases, `gpu_id`; `info` and `warnings` are strings or lists of strings;
- DCGM 4.x: `{"DCGM Diagnostic": {...}}` in the same shape, results carry `entity_group`/`entity_id`, `info` lists
  and `warnings` objects (`{"warning": ..., "error_id": ...}`), and each test may carry a `test_summary` whose status
  stands for the test where it has no per-GPU result;
- entries may be `null` (a test DCGM skipped without a record): they are skipped;
- a run that could not start says so in `runtime_error` (DCGM 4's schema, NVIDIA/DCGM
  testing/python3/dcgm_diag_schema.json): a DcgmOutputError with DCGM's words.
Statuses are Pass, Fail, Warn, Skip and Not Run in either case. Anything else is a DcgmOutputError with a one-line
reason naming what was wrong; no other exception escapes `parse_diag` or `parse_diag_text`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dcforge.errors import DcforgeError
from dcforge.harness.processes import ManagedProcess
from dcforge.gpu.readings import DcgmDiag, DcgmTestResult

STATUSES = {"pass": "pass", "fail": "fail", "warn": "warn", "warning": "warn", "skip": "skip", "skipped": "skip",
            "not run": "not run", "notrun": "not run", "not_run": "not run"}
ROOTS = ("DCGM Diagnostic", "DCGM GPU Diagnostic")


class DcgmOutputError(DcforgeError):
    exit_code = 1


def _texts(value: Any, key: str) -> list[str]:
    """Strings of an `info`/`warnings`/`errors` field: a string, a list of strings, or objects with `key`."""
    items = value if isinstance(value, list) else [value] if value else []
    texts = []
    for item in items:
        if isinstance(item, dict):
            item = item.get(key, item.get("message", ""))
        if item not in (None, ""):
            texts.append(str(item))
    return texts


def _message(result: dict[str, Any]) -> str:
    parts = _texts(result.get("warnings"), "warning") + _texts(result.get("errors"), "message")
    parts = parts or _texts(result.get("info"), "info")
    return " ".join(" ".join(parts).split())


def _error_severity(result: dict[str, Any]) -> int | None:
    """The gravest `error_severity` of a DCGM 4 result's warnings, None when none carries one."""
    found = [w.get("error_severity") for w in result.get("warnings") or [] if isinstance(w, dict)]
    numbers = [value for value in found if isinstance(value, int) and not isinstance(value, bool)]
    return max(numbers, default=None)


def _gpu_id(value: Any, where: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise DcgmOutputError(f"dcgmi diag -j: {where} has GPU id {value!r}, expected a number") from None


def _gpus(result: dict[str, Any], where: str) -> list[int | None]:
    if result.get("entity_id") is not None:
        group = str(result.get("entity_group") or "GPU").upper()
        return [_gpu_id(result["entity_id"], where)] if group == "GPU" else [None]
    ids = result.get("gpu_ids", result.get("gpu_id"))
    if ids is None or str(ids).strip() == "":
        return [None]
    if isinstance(ids, list):
        return [_gpu_id(part, where) for part in ids] or [None]
    return [_gpu_id(part, where) for part in str(ids).split(",") if part.strip()] or [None]


def _status(raw: Any, where: str) -> str:
    status = STATUSES.get(str(raw if raw is not None else "").strip().lower())
    if status is None:
        raise DcgmOutputError(f"dcgmi diag -j: {where} has status {raw!r}, expected one of Pass, Fail, Warn, Skip, "
                              "Not Run")
    return status


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DcgmOutputError(f"dcgmi diag -j: {where} is {type(value).__name__}, expected a list")
    return value


def parse_diag(document: Any, level: int) -> DcgmDiag:
    """The results of one `dcgmi diag -j` document (any of the layouts in the module docstring)."""
    root = next((document[key] for key in ROOTS if isinstance(document, dict) and key in document), None)
    if isinstance(root, dict) and root.get("runtime_error") and not root.get("test_categories"):
        words = " ".join(str(root["runtime_error"]).split())
        raise DcgmOutputError(f"dcgmi diag -j: DCGM reports a runtime error: {words}")
    if not isinstance(root, dict) or "test_categories" not in root:
        raise DcgmOutputError("dcgmi diag -j: no 'DCGM Diagnostic.test_categories' (nor 'DCGM GPU Diagnostic.'"
                              "test_categories') in its output")
    results: list[DcgmTestResult] = []
    for category in _list(root["test_categories"], "test_categories"):
        if not isinstance(category, dict):
            continue
        for test in _list(category.get("tests"), f"category {category.get('category')!r} tests"):
            if not isinstance(test, dict):
                continue
            name = str(test.get("name", "?"))
            entries = [r for r in _list(test.get("results"), f"test {name!r} results") if isinstance(r, dict)]
            summary = test.get("test_summary")
            if not entries and isinstance(summary, dict) and summary.get("status") is not None:
                entries = [summary]
            for result in entries:
                status = _status(result.get("status"), f"test {name!r}")
                for gpu in _gpus(result, f"test {name!r}"):
                    results.append(DcgmTestResult(name, status, gpu, _message(result), _error_severity(result)))
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    version = str(metadata.get("version") or root.get("version") or document.get("version") or "")
    return DcgmDiag(level=level, results=tuple(results), version=version)


def parse_diag_text(text: str, level: int) -> DcgmDiag:
    """The diagnostic in dcgmi's printed output: text before the JSON (`Successfully ran diagnostic...`) and after
    it is ignored; no JSON, or JSON that does not parse, is a DcgmOutputError."""
    start = text.find("{")
    if start < 0:
        raise DcgmOutputError(f"dcgmi diag -r {level} -j printed no JSON: {' '.join(text.split())[:200]!r}")
    try:
        document, _ = json.JSONDecoder().raw_decode(text[start:])  # dcgmi may print lines after the JSON
    except (ValueError, RecursionError) as error:
        raise DcgmOutputError(f"dcgmi diag -r {level} -j printed JSON that does not parse: {error}") from None
    return parse_diag(document, level)


def run_diag(level: int, timeout_s: float, output_path: Path) -> tuple[DcgmDiag | None, str | None]:
    """The parsed diagnostic (dcgmi's output kept in `output_path`), or None and why it did not run."""
    dcgmi = shutil.which("dcgmi")
    if dcgmi is None:
        return None, "DCGM not installed (no dcgmi): diagnostics not run"
    # dcgmi exits non-zero when a test fails; the JSON still says which, so the exit code is not the verdict
    with ManagedProcess([dcgmi, "diag", "-r", str(level), "-j"], log_path=output_path) as process:
        code = process.wait(timeout_s)
    output = output_path.read_text(errors="replace")
    if "{" not in output:
        raise DcgmOutputError(f"dcgmi diag -r {level} -j printed no JSON (exit {code}): {output.strip()[:200]}")
    return parse_diag_text(output, level), None
