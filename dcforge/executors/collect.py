"""Run a command, then copy files it left elsewhere into the results volume, so `Execution.read_result` finds them.

    python -m dcforge.executors.collect --into {volume[results]} --file {volume[checkpoints]}/run/metrics.jsonl \\
        -- <command ...>

For a workload whose record must outlive its pod: it writes the file on the shared checkpoints volume (a claim on
Kubernetes), where a replacement pod appends to it, and the pod that finishes hands the whole file back. Signals
(SIGTERM, SIGINT) are passed to the command; the exit code is the command's; a file that does not exist is not
copied (read_result then says so).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m dcforge.executors.collect --into DIR --file PATH ... -- COMMAND ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    into = Path(options[options.index("--into") + 1]) if "--into" in options else None
    files = [Path(options[i + 1]) for i, option in enumerate(options) if option == "--file"]
    if into is None or not command:
        print("collect: --into DIR and a command after -- are required", file=sys.stderr)
        return 2
    started: list[subprocess.Popen] = []

    def forward(received: int, _frame: object) -> None:
        for child in started:
            child.send_signal(received)

    for number in (signal.SIGTERM, signal.SIGINT):  # before the start: no moment where a signal kills only us
        signal.signal(number, forward)
    process = subprocess.Popen(command)
    started.append(process)
    code = process.wait()
    into.mkdir(parents=True, exist_ok=True)
    for path in files:
        if path.is_file():
            shutil.copyfile(path, into / path.name)
    return code


if __name__ == "__main__":
    sys.exit(main())
