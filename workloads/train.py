"""Train the bundled GPT under torchrun: DDP (or FSDP2), gloo on CPU / NCCL on GPU, DCP checkpoints, JSONL metrics.

    torchrun --nproc_per_node=2 workloads/train.py --preset tiny --steps 20 --metrics-file metrics.jsonl

Every rank runs this file. On CPU a run is bit-for-bit reproducible from its seed, including across a restart
from a checkpoint: data is a function of the step, and the checkpoint holds model, optimizer, LR schedule, data
position, RNG state and step. Metric formulas (docs/metrics.md#train): tokens/s per device = tokens since the last log /
(Δt · devices); MFU = flops_per_token · tokens/s / peak FLOP/s, flops_per_token = 6·N + 6·L·H·Q·T.
"""

from __future__ import annotations

from dcforge.process_lifetime import die_with_torchrun_agent

# First, before torch loads for seconds: torchrun gives each worker a session of its own, so a SIGKILLed agent
# would leave it running; from here on the worker dies with the agent.
die_with_torchrun_agent()

import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from workloads.checkpointing import (CheckpointCorruptError, CheckpointError, complete_checkpoints,
                                     ensure_writable, load_checkpoint, read_marker, save_checkpoint)
from workloads.model import GPT, flops_per_token, get_preset
from workloads.train_config import TrainConfig, parse_args
from workloads.train_data import SyntheticBigramData, TextFileData, rank_slice


class MetricsLog:
    """JSONL lines with a wall-clock timestamp; only rank 0 writes, except the fault event of a dying rank."""

    def __init__(self, path: str | None, rank: int):
        self.path = path
        self.rank = rank

    def write(self, record: dict, any_rank: bool = False) -> None:
        if not self.path or (self.rank != 0 and not any_rank):
            return
        line = json.dumps({"time": time.time(), **record}) + "\n"
        with open(self.path, "a") as handle:  # one short append per line: safe across processes
            handle.write(line)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine down to min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def peak_flops_per_device(config: TrainConfig, device: torch.device) -> float | None:
    if config.peak_flops:
        return config.peak_flops
    if device.type == "cuda":
        from dcforge.spec.gpus import gpu_model_for_device_name

        model = gpu_model_for_device_name(torch.cuda.get_device_name(device))
        return model.peak_bf16_flops if model else None
    return None  # CPU peak is measured by the caller (a matmul benchmark) and passed as --peak-flops


def params_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def wrap_model(model: GPT, config: TrainConfig, device: torch.device) -> torch.nn.Module:
    if config.compile:
        model = torch.compile(model)
    if config.parallelism == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def resume(config: TrainConfig, model_config, model, optimizer, log: MetricsLog) -> dict | None:
    """Load the newest checkpoint that verifies; a corrupted one is reported and the next older one tried."""
    for step, path in reversed(complete_checkpoints(config.checkpoint_dir)):
        marker = read_marker(path)  # the marker is the last thing written, so it is whole
        if marker["model_config"] != dataclasses.asdict(model_config):
            raise CheckpointError(f"checkpoint {path} holds a different model ({marker['model_config']}) than "
                                  f"preset {config.preset!r} with seq_len {config.seq_len}")
        model_state, optim_state = get_state_dict(model, optimizer)
        tensors = {"model": model_state, "optim": optim_state}
        error = ""
        try:
            rng = load_checkpoint(path, tensors)
        except CheckpointCorruptError as problem:
            error = str(problem)
        failed = torch.tensor([1.0 if error else 0.0])
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)  # every rank must take the same decision
        if failed.item():
            log.write({"event": "checkpoint_corrupt", "step": step, "error": error or "corrupt on another rank"})
            print(f"[train] {error or f'checkpoint {path} is corrupt on another rank'}; trying an older one",
                  file=sys.stderr)
            continue
        set_state_dict(model, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"])
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        return marker["training_state"]
    if complete_checkpoints(config.checkpoint_dir):
        raise CheckpointCorruptError(f"every checkpoint under {config.checkpoint_dir} failed verification")
    return None


def train(config: TrainConfig, rank: int, world: int, device: torch.device) -> None:
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    log = MetricsLog(config.metrics_file, rank)
    model_config = get_preset(config.preset, max_seq_len=config.seq_len)
    torch.manual_seed(config.seed)
    model = GPT(model_config).to(device)
    wrapped = wrap_model(model, config, device)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    data = TextFileData(config.data_file, config.seed, config.seq_len) if config.data_file \
        else SyntheticBigramData(config.seed)
    last_step = 0
    state = resume(config, model_config, wrapped, optimizer, log) if config.checkpoint_dir and config.resume else None
    if state:
        scheduler.load_state_dict(state["scheduler"])
        last_step = state["step"]
    log.write({"event": "start", "attempt": attempt, "resumed_from_step": last_step if state else None,
               "world_size": world, "device": device.type, "preset": config.preset})

    per_device_tokens = config.global_batch_size // world * config.seq_len
    flops = flops_per_token(model_config, config.seq_len)
    peak = peak_flops_per_device(config, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)
    previous = time.perf_counter()
    for step in range(last_step + 1, config.steps + 1):
        if step == config.fail_at_step and rank == config.fail_rank and attempt == 0:
            log.write({"event": "fault", "step": step, "rank": rank}, any_rank=True)
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, no goodbye to the peers
        tokens = rank_slice(data.batch(step, config.global_batch_size, config.seq_len), rank, world).to(device)
        with autocast:
            loss = _loss(wrapped, tokens)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(wrapped.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = loss.detach().float().reshape(1)
        dist.all_reduce(mean_loss)  # also a sync point, so step times are comparable across ranks
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        step_time = now - previous
        tokens_per_s = per_device_tokens / step_time
        record = {"step": step, "attempt": attempt, "loss": mean_loss.item() / world, "step_time_s": step_time,
                  "tokens_per_s": tokens_per_s, "tokens_per_s_total": tokens_per_s * world,
                  "mfu": flops * tokens_per_s / peak if peak else None, "lr": scheduler.get_last_lr()[0]}
        log.write(record)
        if rank == 0 and config.log_every and step % config.log_every == 0:
            print(f"step {step:5d}  loss {record['loss']:.4f}  {step_time * 1000:7.1f} ms  "
                  f"{tokens_per_s:9.0f} tok/s/device", flush=True)
        if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
            model_state, optim_state = get_state_dict(wrapped, optimizer)
            training_state = {"step": step, "next_data_step": step + 1, "scheduler": scheduler.state_dict(),
                              "seed": config.seed, "global_batch_size": config.global_batch_size}
            rng = {"cpu": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            saved = save_checkpoint(config.checkpoint_dir, step, {"model": model_state, "optim": optim_state},
                                    training_state, model_config, keep=config.keep_checkpoints, rng_state=rng)
            log.write({"event": "checkpoint", "step": step, "bytes": saved.bytes, "save_s": saved.seconds})
        previous = time.perf_counter()  # checkpoint time is not step time
    log.write({"event": "final", "step": config.steps, "attempt": attempt,
               "params_sha256": params_sha256(model) if config.parallelism == "ddp" else None})


def _loss(wrapped: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = wrapped(tokens[:, :-1])  # through the wrapper, so DDP hooks (or FSDP) see the forward
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        config.validate(world)
        if config.checkpoint_dir:
            ensure_writable(config.checkpoint_dir)
    except (ValueError, CheckpointError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // local_world))
        torch.use_deterministic_algorithms(True)
    if "MASTER_ADDR" not in os.environ:  # plain `python train.py`: a world of one
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=config.collective_timeout_s))
    try:
        train(config, rank, world, device)
    except CheckpointError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
