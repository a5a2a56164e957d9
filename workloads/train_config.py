"""`TrainConfig`: every knob of `workloads/train.py`, one docstring per field, which is also its `--help` text."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from workloads.model import PRESETS, get_preset


class TrainConfigError(ValueError):
    """A setting that cannot work, naming the `TrainConfig` field it is about (so callers that took the value from
    their own settings can point at their key without reading the message)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class TrainConfig:
    preset: str = "tiny"
    """Model size: one of workloads.model.PRESETS."""
    seq_len: int = 128
    """Tokens per training sequence (at most the preset's max_seq_len)."""
    global_batch_size: int = 8
    """Sequences per step over all ranks; must be divisible by the world size."""
    steps: int = 20
    """Optimizer steps to reach (a resumed run continues up to the same number)."""
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    warmup_steps: int = 5
    """Linear warm-up steps, then cosine decay to min_lr_ratio * lr at `steps`."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    seed: int = 1234
    """Seeds the initial weights and the data; equal seeds give bit-identical runs on CPU."""
    data_file: str | None = None
    """A local text file to train on (its UTF-8 bytes); default: synthetic bigram data."""
    checkpoint_dir: str | None = None
    """Where DCP checkpoints go; none are written when unset."""
    checkpoint_every: int = 0
    """Save after every this many steps (0: never)."""
    keep_checkpoints: int = 2
    """Complete checkpoints to keep (older ones are deleted after a successful save)."""
    resume: bool = True
    """Resume from the newest complete checkpoint in checkpoint_dir when there is one."""
    metrics_file: str | None = None
    """Per-step JSONL metrics (rank 0 writes; appended, so restarts add to it)."""
    fail_at_step: int | None = None
    """Fault injection: rank fail_rank SIGKILLs itself at the start of this step, on the first attempt only."""
    fail_rank: int = 1
    """Which rank the fault injection kills."""
    hold_at_step: int | None = None
    """Failure injection from outside: after this step (and its checkpoint) rank 0 prints HOLD_LINE and every rank
    waits up to hold_s for the harness to kill the whole node -- once per checkpoint_dir (a marker file there), so
    the run that resumes after the kill goes on."""
    hold_s: float = 120.0
    """How long the ranks wait at hold_at_step before going on (a harness that never struck)."""
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    """DDP replicates the model; FSDP2 (fully_shard) shards it (GPU only)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA (NCCL) when available, else CPU (gloo)."""
    threads: int | None = None
    """Intra-op CPU threads per rank; default: CPU cores divided by the local ranks."""
    peak_flops: float | None = None
    """Peak FLOP/s per device for MFU; default: the GPU table on CUDA, none on CPU (MFU not reported)."""
    collective_timeout_s: float = 120.0
    """How long a collective may block before the process group gives up (a lost peer ends the run)."""
    log_every: int = 1
    """Print a progress line to stdout every this many steps (rank 0)."""

    def validate(self, world_size: int) -> None:
        """Raise TrainConfigError (a ValueError) with a one-line message and the field, for settings that cannot
        work."""
        try:
            model = get_preset(self.preset)
        except ValueError as error:  # unknown preset: the message lists the presets
            raise TrainConfigError("preset", str(error)) from None
        if not 1 <= self.seq_len <= model.max_seq_len:
            raise TrainConfigError("seq_len", f"seq_len {self.seq_len} must be between 1 and the preset's "
                                              f"max_seq_len {model.max_seq_len}")
        if self.global_batch_size < 1 or self.global_batch_size % world_size:
            raise TrainConfigError("global_batch_size", f"global_batch_size {self.global_batch_size} is not "
                                                        f"divisible by the world size {world_size}")
        if self.steps < 1:
            raise TrainConfigError("steps", f"steps must be >= 1, got {self.steps}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise TrainConfigError("checkpoint_dir", "checkpoint_every is set but checkpoint_dir is not")
        if self.checkpoint_every < 0:
            raise TrainConfigError("checkpoint_every", "checkpoint_every must be >= 0")
        if self.keep_checkpoints < 1:
            raise TrainConfigError("keep_checkpoints", "keep_checkpoints must be >= 1")
        if self.hold_at_step is not None and not (self.checkpoint_dir and 1 <= self.hold_at_step < self.steps):
            raise TrainConfigError("hold_at_step", f"hold_at_step {self.hold_at_step} needs a checkpoint_dir (its "
                                                   f"marker goes there) and a step between 1 and steps - 1")
        if self.fail_at_step is not None and not 0 <= self.fail_rank < world_size:
            raise TrainConfigError("fail_rank", f"fail_rank {self.fail_rank} is not a rank of a world of size "
                                                f"{world_size}")

    def to_args(self) -> list[str]:
        """Command-line arguments that reproduce this config (for launching train.py under torchrun)."""
        args: list[str] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == field.default or value is None:
                continue
            flag = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else f"--no-{field.name.replace('_', '-')}")
            else:
                args += [flag, str(value)]
        return args


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the only place a field is documented)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = following.value.value
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description="Train the bundled GPT with torchrun.")
    docs = field_docs(TrainConfig)
    hints = get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        help_text = f"{docs.get(field.name, '')} (default: {field.default})"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
            continue
        choices = get_args(hint) if get_origin(hint) is Literal else None
        kinds = [kind for kind in get_args(hint) if kind is not type(None)] or [hint]
        parser.add_argument(flag, type=_parse_as(kinds[0]), default=field.default, choices=choices, help=help_text)
    return parser


def _parse_as(kind: Any):
    return kind if kind in (int, float) else str


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    namespace = build_parser().parse_args(argv)
    return TrainConfig(**vars(namespace))


__all__ = ["PRESETS", "TrainConfig", "build_parser", "parse_args"]
