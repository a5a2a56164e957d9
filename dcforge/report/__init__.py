"""Reports of an acceptance run: `report.json` (versioned schema), `junit.xml`, self-contained `report.html`.

Files are written atomically (temp file + rename) after every check, so Ctrl-C or a crash leaves a complete,
readable report of everything measured so far.
"""

from __future__ import annotations

import json
import platform
import socket
import sys
from pathlib import Path

from dcforge import __version__
from dcforge.report.baseline import DEFAULT_TOLERANCE, compare
from dcforge.report.files import load_report, write_atomic
from dcforge.report.html import render_html
from dcforge.report.junit import junit_xml
from dcforge.report.provenance import provenance

SCHEMA = "dcforge.report/v1"
FILES = ("report.json", "junit.xml", "report.html")


def build_report(state, *, baseline: dict | None = None, baseline_path: str | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """The report.json document of a RunState (see dcforge.harness.runner)."""
    from dcforge.report.provenance import git_commit

    env = state.env
    checks = [state.results[name].to_dict() for name in env.spec.acceptance.checks if name in state.results]
    report = {
        "schema": SCHEMA,
        "status": state.status,
        "status_reason": state.status_reason,
        "metadata": {
            "environment": env.spec.name,
            "env_file": str(env.path),
            "env_sha256": env.sha256,
            "dcforge_version": __version__,
            "git_commit": git_commit(),
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started_at": state.started_at,
            "finished_at": state.finished_at,
            "selected_checks": state.selected,
            "running": state.running,
            "interrupted": state.interrupted,
            "interrupted_by": state.interrupted_by.name if state.interrupted_by is not None else None,
            "profile": state.profile,
        },
        "summary": {
            "checks": _count(c["status"] for c in checks),
            "slos": _count(s.verdict for s in state.slo_results),
        },
        "checks": checks,
        "slos": [slo.to_dict() for slo in state.slo_results],
        "baseline": None,
        "deploy": state.deploy,
        "provenance": provenance(state.report_dir, Path(env.path).resolve()),
    }
    if baseline is not None:
        comparisons = compare(report, baseline, tolerance)
        report["baseline"] = {"path": baseline_path or "", "tolerance": tolerance,
                              "comparisons": [c.to_dict() for c in comparisons],
                              "regressions": [c.metric for c in comparisons if c.regressed]}
    return report


def _count(statuses) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def write_report_files(report: dict, directory: Path, *, html: bool = True) -> None:
    """Write report.json first (the source of truth), then what is rendered from it."""
    write_atomic(directory / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_atomic(directory / "junit.xml", junit_xml(report))
    if html:
        write_atomic(directory / "report.html", render_html(report))


def rerender(directory_or_file: Path) -> Path:
    """`dcforge report DIR`: regenerate junit.xml and report.html from report.json."""
    path = Path(directory_or_file)
    directory = path if path.is_dir() else path.parent
    report = load_report(path)
    write_atomic(directory / "junit.xml", junit_xml(report))
    write_atomic(directory / "report.html", render_html(report))
    return directory
