"""Reading and writing a report's files: written whole or not at all, so a reader never sees half a report."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; reports are meant to be shared and served
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise



def load_report(directory_or_file: Path) -> dict:
    from dcforge.report.baseline import load_baseline

    path = Path(directory_or_file)
    return load_baseline(path / "report.json" if path.is_dir() else path, what="report")
