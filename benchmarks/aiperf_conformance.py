"""Conformance with NVIDIA AIPerf: our load step and `aiperf profile` against the same server and load agree on
TTFT, TPOT and e2e latency means and p95 (python -m benchmarks.aiperf_conformance [--seconds 20] [--install]).

The server is the fake OpenAI endpoint (benchmarks/capacity_fake_openai.py) with a decode pace: first token after
TTFT_S, then one token every TOKEN_GAP_S, ANSWER_TOKENS in all, so both tools measure the same known latencies.
Load: CONCURRENCY closed-loop users with no think time, streamed chat requests. Our side is the inference check's
load path (run_load, one Locust process); AIPerf runs `aiperf profile --concurrency CONCURRENCY` with a request
count matching ours, taking the output length from the server's usage as we do (`--use-server-token-count`;
with its own tokenizer's count of the answer text its TPOT divides by another token count), one worker and one
record processor (2 cores). Figures compared (ours / AIPerf's, both in ms): mean and p95 of TTFT (time_to_first_token),
TPOT (AIPerf's inter_token_latency) and e2e (request_latency); the goal is every ratio within 1 +- TOLERANCE.

AIPerf is not a dependency of dcforge: it lives in its own virtual environment outside the repository (AIPERF_VENV,
default ~/.cache/dcforge/aiperf-venv; `--install` creates it with aiperf==AIPERF_VERSION from PyPI). It needs a
tokenizer for its synthetic prompts; with no network to a model hub, a small byte-level BPE tokenizer is trained
locally (its prompts' content does not matter to the fake). tests/integration/test_aiperf_conformance.py runs this
when DCFORGE_AIPERF=1 and the venv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.capacity_search import fake_capacity_server

AIPERF_VERSION = "0.13.0"
AIPERF_VENV = Path(os.environ.get("AIPERF_VENV", Path.home() / ".cache" / "dcforge" / "aiperf-venv"))
CONCURRENCY = 4
TTFT_S = 0.05
TOKEN_GAP_S = 0.02
ANSWER_TOKENS = 16
TOLERANCE = 0.05
FIGURES = {"ttft": ("ttft_ms", "time_to_first_token"), "tpot": ("tpot_ms", "inter_token_latency"),
           "e2e": ("e2el_ms", "request_latency")}
"""Our metric (vLLM's name, `<stat>_<name>`) and AIPerf's for each compared figure."""
_TOKENIZER_SCRIPT = """
import sys
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast
words = [f"word{i} token{i % 97} text{i % 13}" for i in range(4000)]
bpe = ByteLevelBPETokenizer()
bpe.train_from_iterator(words, vocab_size=600, min_frequency=1, show_progress=False)
PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>").save_pretrained(sys.argv[1])
"""


def aiperf_bin() -> Path:
    return AIPERF_VENV / "bin" / "aiperf"


def install() -> None:
    """The test-only venv with AIPerf (never the project's venv: its pins would fight dcforge's)."""
    if not aiperf_bin().exists():
        subprocess.run([sys.executable, "-m", "venv", str(AIPERF_VENV)], check=True, timeout=300)
        subprocess.run([str(AIPERF_VENV / "bin" / "pip"), "install", "-q", f"aiperf=={AIPERF_VERSION}"], check=True,
                       timeout=1800)


def local_tokenizer(folder: Path) -> Path:
    subprocess.run([str(AIPERF_VENV / "bin" / "python"), "-c", _TOKENIZER_SCRIPT, str(folder)], check=True,
                   timeout=300, capture_output=True)
    return folder


def ours(base_url: str, work: Path, seconds: float) -> tuple[dict[str, float], int]:
    """The inference check's load path: (summary, measured requests)."""
    from benchmarks.load_workers import load_on_fake
    from loadtests.metrics import summarize

    records, _, _ = load_on_fake(base_url, work, {"users": CONCURRENCY, "maxTokens": ANSWER_TOKENS,
                                                  "warmupPerReplica": 2, "durationS": seconds, "thinkTimeS": 0})
    return summarize(records), len(records)


def theirs(base_url: str, work: Path, requests: int) -> dict:
    """`aiperf profile` at the same concurrency and request count; its profile_export_aiperf.json."""
    artefacts = work / "aiperf"
    command = [str(aiperf_bin()), "profile", "--url", base_url, "--endpoint-type", "chat", "--streaming",
               "--model", "fake", "--tokenizer", str(local_tokenizer(work / "tokenizer")), "--api-key", "test-key",
               "--concurrency", str(CONCURRENCY), "--request-count", str(requests), "--warmup-request-count",
               str(2 * CONCURRENCY), "--prompt-input-tokens-mean", "8", "--prompt-output-tokens-mean",
               str(ANSWER_TOKENS), "--output-artifact-dir", str(artefacts), "--no-server-metrics",
               "--no-gpu-telemetry", "--no-auto-plot", "--use-server-token-count", "--workers-max", "1",
               "--record-processors", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=work)
    exports = sorted(artefacts.rglob("profile_export_aiperf.json"))
    if proc.returncode != 0 or not exports:
        raise RuntimeError(f"aiperf exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(exports[0].read_text())


def compare(summary: dict[str, float], export: dict) -> dict[str, tuple[float, float, float]]:
    """`<figure>.<stat>` -> (ours ms, AIPerf's ms, ours / AIPerf's)."""
    rows = {}
    for figure, (name, their_name) in FIGURES.items():
        for stat, their_stat in (("mean", "avg"), ("p95", "p95")):
            mine, peer = summary[f"{stat}_{name}"], float(export[their_name][their_stat])
            rows[f"{figure}.{stat}"] = (mine, peer, mine / peer)
    return rows


def run(seconds: float) -> dict[str, tuple[float, float, float]]:
    work = Path(tempfile.mkdtemp(prefix="bench-aiperf-"))
    pace = {"FAKE_TTFT_S": str(TTFT_S), "FAKE_TOKEN_GAP_S": str(TOKEN_GAP_S), "FAKE_ANSWER_TOKENS": str(ANSWER_TOKENS)}
    with fake_capacity_server(work, 1e6, **pace) as base_url:
        summary, measured = ours(base_url, work / "ours", seconds)
        export = theirs(base_url, work / "theirs", measured)
    return compare(summary, export)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--install", action="store_true", help=f"create {AIPERF_VENV} with aiperf {AIPERF_VERSION}")
    args = parser.parse_args()
    if args.install:
        install()
    if not aiperf_bin().exists():
        sys.exit(f"no AIPerf at {aiperf_bin()}: run with --install (PyPI aiperf=={AIPERF_VERSION})")
    print(f"load average (1, 5, 15 min) at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for key, (mine, peer, ratio) in run(args.seconds).items():
        verdict = "ok" if abs(ratio - 1) <= TOLERANCE else "OUTSIDE"
        print(f"{key:10s} dcforge {mine:8.2f} ms  aiperf {peer:8.2f} ms  ratio {ratio:.3f}  {verdict}", flush=True)
    print(f"load average (1, 5, 15 min) at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
