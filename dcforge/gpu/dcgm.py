"""DCGM diagnostics: run `dcgmi diag -r LEVEL -j` and parse its JSON.

Two documented layouts: DCGM 3 (`"DCGM GPU Diagnostic"`, results carry `gpu_ids` and an `info` string) and DCGM 4
(`"DCGM Diagnostic"`, results carry `entity_id`, `info` lists and `warnings` objects). Statuses are Pass, Fail,
Warn, Skip and Not Run in either case.
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
            "not run": "not run", "notrun": "not run"}


class DcgmOutputError(DcforgeError):
    exit_code = 1


def _messages(result: dict[str, Any]) -> str:
    parts: list[str] = []
    for warning in result.get("warnings") or []:
        parts.append(str(warning.get("warning", warning)) if isinstance(warning, dict) else str(warning))
    for error in result.get("errors") or []:
        parts.append(str(error.get("message", error)) if isinstance(error, dict) else str(error))
    if not parts:
        info = result.get("info")
        parts = [str(i) for i in info] if isinstance(info, list) else ([str(info)] if info else [])
    return " ".join(" ".join(parts).split())


def _gpus(result: dict[str, Any]) -> list[int | None]:
    if "entity_id" in result and str(result.get("entity_group", "GPU")).upper() == "GPU":
        return [int(result["entity_id"])]
    ids = str(result.get("gpu_ids", "")).strip()
    return [int(part) for part in ids.split(",") if part.strip()] or [None]


def parse_diag(document: dict[str, Any], level: int) -> DcgmDiag:
    root = document.get("DCGM Diagnostic") or document.get("DCGM GPU Diagnostic")
    if not isinstance(root, dict) or not isinstance(root.get("test_categories"), list):
        raise DcgmOutputError("dcgmi diag -j: no 'DCGM Diagnostic.test_categories' in its output")
    results: list[DcgmTestResult] = []
    for category in root["test_categories"]:
        for test in category.get("tests", []):
            for result in test.get("results", []):
                raw = str(result.get("status", "")).strip().lower()
                status = STATUSES.get(raw)
                if status is None:
                    raise DcgmOutputError(f"dcgmi diag -j: test {test.get('name')!r} has unknown status {raw!r}")
                for gpu in _gpus(result):
                    results.append(DcgmTestResult(str(test.get("name", "?")), status, gpu, _messages(result)))
    version = str((document.get("metadata") or {}).get("version", root.get("version", "")))
    return DcgmDiag(level=level, results=tuple(results), version=version)


def run_diag(level: int, timeout_s: float, output_path: Path) -> tuple[DcgmDiag | None, str | None]:
    """The parsed diagnostic (dcgmi's output kept in `output_path`), or None and why it did not run."""
    dcgmi = shutil.which("dcgmi")
    if dcgmi is None:
        return None, "DCGM not installed (no dcgmi): diagnostics not run"
    # dcgmi exits non-zero when a test fails; the JSON still says which, so the exit code is not the verdict
    with ManagedProcess([dcgmi, "diag", "-r", str(level), "-j"], log_path=output_path) as process:
        code = process.wait(timeout_s)
    output = output_path.read_text(errors="replace")
    text = output[output.find("{"):] if "{" in output else ""
    if not text:
        raise DcgmOutputError(f"dcgmi diag -r {level} -j printed no JSON (exit {code}): {output.strip()[:200]}")
    document, _ = json.JSONDecoder().raw_decode(text)  # dcgmi may print lines after the JSON
    return parse_diag(document, level), None
