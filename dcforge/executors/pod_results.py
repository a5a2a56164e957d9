"""A pod's results volume, carried through its log: written by the pod when its workload exits, read by dcforge.

The results volume of a pod is an emptyDir, gone with the pod; the pod log stays readable through the API until the
pod is deleted. So the container's script (dcforge/executors/kubernetes_objects.py) ends with
`python -m dcforge.executors.pod_results <results dir>`, which prints one line per file:

    dcforge.result <name> <base64 of the content>

and `Execution.read_result` (dcforge/executors/kubernetes.py) finds the line for the file it is asked for. The
last line for a name wins (a file printed twice, e.g. by a restarted container, is the newer content).
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

MARKER = "dcforge.result"


def result_lines(results_dir: Path) -> list[str]:
    """One line per regular file under `results_dir` (names relative to it, sorted)."""
    lines = []
    for path in sorted(p for p in results_dir.rglob("*") if p.is_file()):
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        lines.append(f"{MARKER} {path.relative_to(results_dir).as_posix()} {encoded}")
    return lines


def parse_results(log: str) -> dict[str, bytes]:
    """File name -> content for every result line in a pod log (other lines are the workload's own output)."""
    found: dict[str, bytes] = {}
    for line in log.splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == MARKER:
            try:
                found[parts[1]] = base64.b64decode(parts[2], validate=True)
            except ValueError:
                continue  # a workload line that happens to start with the marker
    return found


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path(".")
    if directory.is_dir():
        lines = result_lines(directory)
        # A newline first: the workload's last line may lack one.
        sys.stdout.write("\n" + "".join(line + "\n" for line in lines))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
