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
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from workloads.checkpointing import (CheckpointCorruptError, CheckpointError, complete_checkpoints,
                                     ensure_writable, load_checkpoint, read_marker, save_checkpoint)
from workloads.model import GPT, GPTConfig, flops_per_token, get_preset
from workloads.records import (HOLD_LINE, JsonlAppender, Record, TrainCheckpointCorrupt, TrainCheckpointSaved,
                               TrainFault, TrainFinal, TrainStart, TrainStep, emit_result)
from workloads.train_config import TrainConfig, parse_args
from workloads.train_data import SyntheticBigramData, TextFileData, rank_slice


class MetricsLog:
    """The run's records in the metrics JSONL; only rank 0 writes, except the fault record of a dying rank."""

    def __init__(self, path: str | None, rank: int):
        self.file = JsonlAppender(path)
        self.rank = rank

    def write(self, record: Record, any_rank: bool = False) -> None:
        if self.rank == 0 or any_rank:
            self.file.write(record)


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
            log.write(TrainCheckpointCorrupt(step=step, error=error or "corrupt on another rank"))
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


@dataclass
class Attempt:
    """One worker group's training state: what every step reads and updates."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    attempt: int
    """torchrun's restart count (0 for the first worker group); the fault is injected on attempt 0 only."""
    log: MetricsLog
    model_config: GPTConfig
    model: GPT
    """The unwrapped model (its state is the one hashed at the end)."""
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data: SyntheticBigramData | TextFileData


def build_attempt(config: TrainConfig, rank: int, world: int, device: torch.device) -> Attempt:
    """Model, wrapper, optimizer, LR schedule and data of a fresh start (the seed makes them identical on a
    restart until a checkpoint is loaded over them)."""
    model_config = get_preset(config.preset, max_seq_len=config.seq_len)
    torch.manual_seed(config.seed)
    model = GPT(model_config).to(device)
    wrapped = wrap_model(model, config, device)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    data = TextFileData(config.data_file, config.seed, config.seq_len) if config.data_file \
        else SyntheticBigramData(config.seed)
    return Attempt(config, rank, world, device, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
                   MetricsLog(config.metrics_file, rank), model_config, model, wrapped, optimizer, scheduler, data)


def start_attempt(run: Attempt) -> int:
    """Resume from the newest good checkpoint when asked to; log the start. Returns the last completed step."""
    config = run.config
    state = resume(config, run.model_config, run.wrapped, run.optimizer, run.log) \
        if config.checkpoint_dir and config.resume else None
    last_step = 0
    if state:
        run.scheduler.load_state_dict(state["scheduler"])
        last_step = state["step"]
    run.log.write(TrainStart(attempt=run.attempt, resumed_from_step=last_step if state else None,
                             world_size=run.world, device=run.device.type, preset=config.preset))
    return last_step


def inject_fault_if_due(run: Attempt, step: int) -> None:
    """Fault injection: the chosen rank SIGKILLs itself at the start of `fail_at_step`, on the first attempt."""
    config = run.config
    if step == config.fail_at_step and run.rank == config.fail_rank and run.attempt == 0:
        run.log.write(TrainFault(step=step, rank=run.rank), any_rank=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, no goodbye to the peers


def hold_if_due(run: Attempt, step: int) -> None:
    """Failure injection from outside (hold_at_step): every rank waits after the step and its checkpoint, rank 0
    having said so on stdout, for the harness to kill the node at a known point -- once per checkpoint_dir."""
    config = run.config
    if step != config.hold_at_step:
        return
    marker = Path(config.checkpoint_dir) / f"held-at-{step}"
    held_before = marker.exists()
    dist.barrier()  # every rank has looked before rank 0 leaves the marker
    if held_before:
        return
    if run.rank == 0:
        marker.touch()
        print(f"{HOLD_LINE} {step}", flush=True)
    time.sleep(config.hold_s)


def optimizer_step(run: Attempt, step: int, autocast) -> float:
    """Forward, backward and update on this step's batch; returns the loss averaged over ranks."""
    config = run.config
    tokens = rank_slice(run.data.batch(step, config.global_batch_size, config.seq_len), run.rank, run.world)
    with autocast:
        loss = _loss(run.wrapped, tokens.to(run.device))
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.wrapped.parameters(), config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    mean_loss = loss.detach().float().reshape(1)
    dist.all_reduce(mean_loss)  # also a sync point, so step times are comparable across ranks
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return mean_loss.item() / run.world


def save_step_checkpoint(run: Attempt, step: int) -> None:
    """Everything a resume needs to continue bit for bit: weights, optimizer, schedule, data position, RNG."""
    config = run.config
    model_state, optim_state = get_state_dict(run.wrapped, run.optimizer)
    training_state = {"step": step, "next_data_step": step + 1, "scheduler": run.scheduler.state_dict(),
                      "seed": config.seed, "global_batch_size": config.global_batch_size}
    rng = {"cpu": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    saved = save_checkpoint(config.checkpoint_dir, step, {"model": model_state, "optim": optim_state},
                            training_state, run.model_config, keep=config.keep_checkpoints, rng_state=rng)
    run.log.write(TrainCheckpointSaved(step=step, bytes=saved.bytes, save_s=saved.seconds))


def train(config: TrainConfig, rank: int, world: int, device: torch.device) -> None:
    run = build_attempt(config, rank, world, device)
    last_step = start_attempt(run)
    per_device_tokens = config.global_batch_size // world * config.seq_len
    flops = flops_per_token(run.model_config, config.seq_len)
    peak = peak_flops_per_device(config, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)
    previous = time.perf_counter()
    for step in range(last_step + 1, config.steps + 1):
        inject_fault_if_due(run, step)
        loss = optimizer_step(run, step, autocast)
        step_time = time.perf_counter() - previous
        tokens_per_s = per_device_tokens / step_time
        run.log.write(TrainStep(step=step, attempt=run.attempt, loss=loss, step_time_s=step_time,
                                tokens_per_s=tokens_per_s, tokens_per_s_total=tokens_per_s * world,
                                mfu=flops * tokens_per_s / peak if peak else None,
                                lr=run.scheduler.get_last_lr()[0]))
        if rank == 0 and config.log_every and step % config.log_every == 0:
            print(f"step {step:5d}  loss {loss:.4f}  {step_time * 1000:7.1f} ms  "
                  f"{tokens_per_s:9.0f} tok/s/device", flush=True)
        if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
            save_step_checkpoint(run, step)
        hold_if_due(run, step)
        previous = time.perf_counter()  # checkpoint time is not step time
    final = TrainFinal(step=config.steps, attempt=run.attempt,
                       params_sha256=params_sha256(run.model) if config.parallelism == "ddp" else None)
    run.log.write(final)
    if rank == 0:
        emit_result(final)


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
