"""Real processes: a kill mid-save, resume past a corrupted checkpoint, bad input, torchrun timeouts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dcforge.steps.torchrun import (TORCHRUN_STOP_MARGIN_S, TorchrunFailed, run_torchrun, torchrun_command,
                                      torchrun_env)
from dcforge.harness.check import CheckContext
from dcforge.paths import WORKLOADS_DIR
from dcforge.spec.loader import load_environment
from workloads.records import TRAIN_RECORDS, TrainCheckpointCorrupt, TrainStart, TrainStep, read_records_file

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]
PYTHON = sys.executable
TRAIN = str(WORKLOADS_DIR / "train.py")


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (a test's unique tmp path): leftovers of a check."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    # The child saves step 1, then dies (SIGKILL) after DCP wrote step 2's data but before the commit.
    script = textwrap.dedent(f"""
        import os, signal, warnings
        warnings.filterwarnings("ignore")
        import torch
        import workloads.checkpointing as ckpt
        from workloads.model import GPT, GPTConfig
        config = GPTConfig(n_layer=1, n_head=2, d_model=16, max_seq_len=8)
        state = {{"model": GPT(config).state_dict()}}
        ckpt.save_checkpoint({str(tmp_path)!r}, 1, state, {{"step": 1}}, config)
        ckpt.torch.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save_checkpoint({str(tmp_path)!r}, 2, state, {{"step": 2}}, config)
    """)
    completed = subprocess.run([PYTHON, "-c", script], timeout=120, capture_output=True)
    assert completed.returncode == -9
    assert (tmp_path / ".partial-step_00000002").is_dir()

    from workloads.checkpointing import latest_checkpoint, load_for_inference

    assert latest_checkpoint(tmp_path)[0] == 1
    model, _ = load_for_inference(tmp_path)  # loads and verifies every checksum
    assert model is not None


def _torchrun(args: list[str], log: Path, timeout: float = 180) -> int:
    command = torchrun_command("train.py", args, nproc=2)
    with open(log, "w") as handle:
        return subprocess.run(command, env=torchrun_env(), stdout=handle, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode


def test_resume_skips_a_corrupted_checkpoint_and_reports_it(tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.jsonl"
    common = ["--seq-len", "32", "--global-batch-size", "2", "--checkpoint-dir", str(ckpt), "--checkpoint-every",
              "3", "--metrics-file", str(metrics), "--log-every", "0"]
    assert _torchrun([*common, "--steps", "6"], tmp_path / "first.log") == 0
    newest = ckpt / "step_00000006"
    victim = max(newest.glob("*.distcp"), key=lambda f: f.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 32] = bytes(32)
    victim.write_bytes(bytes(raw))

    assert _torchrun([*common, "--steps", "8"], tmp_path / "second.log") == 0
    records = read_records_file(metrics, *TRAIN_RECORDS)
    corrupt = [r for r in records if isinstance(r, TrainCheckpointCorrupt)]
    starts = [r for r in records if isinstance(r, TrainStart)]
    assert corrupt and corrupt[0].step == 6
    assert starts[-1].resumed_from_step == 3  # the older, intact checkpoint
    assert [r.step for r in records if isinstance(r, TrainStep) and r.attempt == 0][-5:] == [4, 5, 6, 7, 8]


@pytest.mark.parametrize("args, world, message", [
    (["--preset", "13b"], "1", "unknown model preset '13b'; known presets: tiny, 125m, 350m, 1.3b"),
    (["--global-batch-size", "3"], "2", "global_batch_size 3 is not divisible by the world size 2"),
    (["--checkpoint-dir", "/proc/version/ckpt"], "1", "checkpoint directory /proc/version/ckpt is not writable: Not a directory"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, world, message):
    completed = subprocess.run([PYTHON, TRAIN, *args], env={**os.environ, "WORLD_SIZE": world}, timeout=120,
                               capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [f"train.py: error: {message}"]


def test_a_torchrun_over_its_timeout_is_killed_with_all_its_workers(tmp_path):
    # The check has 4 s left once torchrun's stop margin is kept back: torchrun gets those 4 s.
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path,
                       deadline=time.monotonic() + TORCHRUN_STOP_MARGIN_S + 4.4)
    marker = str(tmp_path / "never.jsonl")
    started = time.monotonic()
    with pytest.raises(TorchrunFailed, match=r"did not finish within 4 s \(what was left of the check's "
                                             r"dcforge:acceptance.timeoutsS\)"):
        run_torchrun(ctx, "train.py", ["--steps", "100000", "--metrics-file", marker], nproc=2,
                     log_path=tmp_path / "torchrun.log")
    assert time.monotonic() - started < 30
    assert processes_mentioning(marker) == []
