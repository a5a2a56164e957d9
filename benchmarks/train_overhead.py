"""Training benchmarks, measured side by side in one run (python -m benchmarks.train_overhead).

1. Harness overhead: the train check's tokens/s per device ÷ a plain DDP loop of the same model, global batch,
   optimizer and thread count (two processes in one gloo group, each taking its slice of the global batch and
   all-reducing gradients as the check's ranks do; no metrics, no logging). Goal >= 0.97. For context the same
   round also runs two independent plain loops (no DDP, no all-reduce): the check ÷ those shows what the gradient
   all-reduce itself costs. The sides alternate for ROUNDS rounds (order rotated each round) and the median of the
   per-round ratios is reported: a single run can swing by 50% with the neighbours' load.
2. CPU MFU of the tiny preset against the measured matmul peak (the train check's own figure, median over the
   rounds). Goal >= 0.35.
3. Checkpoint save GB/s ÷ a raw sequential write of the same bytes to the same directory (the checkpoint check,
   125m weights, median of paired rounds). Goal >= 0.7.
The load average is printed before and after: figures taken at a load above ~2 on this 2-core machine are noise.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN, PER_RANK_BATCH, STEPS, WARMUP = 128, 4, 20, 3
ROUNDS = 3
CHECKPOINT_ROUNDS = 5


def plain_worker(rank: int, world: int, port: int) -> None:
    """One process of the plain loop: the same model, optimizer and data as train.py, no metrics, no logging;
    with world > 1 a DDP group over gloo where each rank takes its slice of the global batch. Prints tokens/s."""
    import torch

    from workloads.model import GPT, get_preset
    from workloads.train_data import SyntheticBigramData

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(get_preset("tiny", max_seq_len=SEQ_LEN))
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = SyntheticBigramData(seed=1234)
    times = []
    for step in range(1, STEPS + 1):
        started = time.perf_counter()
        tokens = data.batch(step, PER_RANK_BATCH * world, SEQ_LEN)[rank * PER_RANK_BATCH:(rank + 1) * PER_RANK_BATCH]
        logits = model(tokens[:, :-1])  # through the DDP wrapper, so its hooks all-reduce the gradients
        torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                          tokens[:, 1:].reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    steady = times[WARMUP:]
    print(json.dumps({"tokens_per_s": PER_RANK_BATCH * SEQ_LEN * len(steady) / sum(steady)}))


def plain_tokens_per_s(ddp: bool) -> float:
    """Tokens/s per process of two plain processes at once: a DDP group, or two independent loops."""
    from dcforge.steps.serving.server import free_port

    # The check's ranks inherit OMP_NUM_THREADS=1 from its torchrun launcher; the plain workers get the same.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    world, port = (2, free_port()) if ddp else (1, 0)
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.train_overhead", "--plain-worker",
                                 str(rank if ddp else 0), str(world), str(port)],
                                stdout=subprocess.PIPE, text=True, env=env) for rank in range(2)]
    rates = [json.loads(worker.communicate(timeout=300)[0])["tokens_per_s"] for worker in workers]
    return sum(rates) / len(rates)


def run_check(name: str, settings: dict):
    from dcforge.checks import check_config_model, load_check
    from dcforge.harness.check import CheckContext
    from dcforge.spec.loader import load_environment

    report_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    ctx = CheckContext(env=load_environment("local"), report_dir=report_dir, deadline=time.monotonic() + 600,
                       log=lambda line: None)
    return load_check(name).run(ctx, check_config_model(name).model_validate(settings))


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    print(f"load average (1, 5, 15 min) at start: {load_average()}")
    train_settings = {"preset": "tiny", "seqLen": SEQ_LEN, "globalBatchSize": 2 * PER_RANK_BATCH, "steps": STEPS,
                      "warmupStepsExcluded": WARMUP, "nprocPerNode": 2}
    ratios, ratios_no_ddp, mfus, peaks = [], [], [], []
    sides = ("check", "plain DDP", "plain loops")
    for round_index in range(ROUNDS):
        measured = {}
        for side in sides[round_index % 3:] + sides[:round_index % 3]:
            if side == "check":
                check = run_check("train", train_settings)
                measured[side] = check.metrics["tokens_per_s"].value
                mfus.append(check.metrics["mfu"].value)
                peaks.append(check.details["peak_flops_per_device"])
            else:
                measured[side] = plain_tokens_per_s(ddp=side == "plain DDP")
        ratios.append(measured["check"] / measured["plain DDP"])
        ratios_no_ddp.append(measured["check"] / measured["plain loops"])
        print(f"  round {round_index + 1}: train check {measured['check']:.0f} tokens/s/device, plain DDP loop "
              f"{measured['plain DDP']:.0f} -> {ratios[-1]:.3f}; independent plain loops {measured['plain loops']:.0f}"
              f" -> {ratios_no_ddp[-1]:.3f}; MFU {mfus[-1]:.3f} (peak {peaks[-1] / 1e9:.1f} GFLOP/s)")
    print(f"harness overhead vs plain DDP: median of {ROUNDS} rounds = {statistics.median(ratios):.3f} "
          "(goal >= 0.97)")
    print(f"check vs independent loops (what the gradient all-reduce costs): median "
          f"{statistics.median(ratios_no_ddp):.3f}")
    print(f"CPU MFU (tiny, vs the measured 1-thread matmul peak, median {statistics.median(peaks) / 1e9:.1f} "
          f"GFLOP/s per rank): median {statistics.median(mfus):.3f} (goal >= 0.35)")
    checkpoint = run_check("checkpoint", {"preset": "125m", "withOptimizer": False, "rounds": CHECKPOINT_ROUNDS,
                                          "corruptionTest": False})
    metrics = checkpoint.metrics
    details = checkpoint.details
    print(f"checkpoint (125m weights, {metrics['checkpoint_gb'].value:.2f} GB, {CHECKPOINT_ROUNDS} paired rounds): "
          f"save {metrics['save_gbps'].value:.3f} GB/s, raw write {metrics['raw_write_gbps'].value:.3f} GB/s "
          f"(median times), median ratio {metrics['save_ratio_to_raw'].value:.3f} (goal >= 0.7); "
          f"load {metrics['load_gbps'].value:.3f} GB/s")
    print(f"  save s per round {[round(t, 3) for t in details['save_times_s']]}, "
          f"raw s per round {[round(t, 3) for t in details['raw_write_times_s']]}")
    print(f"load average (1, 5, 15 min) at end: {load_average()}")


if __name__ == "__main__":
    if "--plain-worker" in sys.argv:
        plain_worker(*(int(arg) for arg in sys.argv[sys.argv.index("--plain-worker") + 1:][:3]))
    else:
        main()
