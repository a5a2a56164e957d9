"""`compression`: what int8 dynamic quantization buys and costs for the bundled model, on the same inputs.

The model is the checkpoint the `train` check wrote in this run (else random weights of `preset`). Its int8 copy is
`workloads.model.quantize_int8` -- the same function the bundled server applies with `--quantize int8` -- which
runs `torch.ao.quantization.quantize_dynamic` over every `nn.Linear` (int8 weights, activations quantized per
batch; the tied output head stays fp32). Both run in this process, one thread pool, alternating rounds:

- `output_tokens_per_s.fp32|int8`: greedy decoding of `newTokens` tokens for `batch` prompts, median over
  `rounds`; `speedup` = median over the paired rounds of fp32 time / int8 time (the same tokens both sides);
- `next_token_agreement` = positions where the two models' argmax next tokens are equal / positions, over
  held-out sequences (the training data's generator at steps training never used) — exact, no sampling;
- `loss_fp32`, `loss_int8`, `loss_delta` = int8 − fp32 cross-entropy on the same held-out sequences.
"""

from __future__ import annotations

import statistics
import time

from pydantic import Field, field_validator

from dcforge.steps.torchrun import check_preset
from dcforge.harness.check import CheckConfig, CheckContext
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult

HELD_OUT_FIRST_STEP = 1_000_000
"""Batches of the training data generator from this step on are never trained on (runs are far shorter)."""


class CompressionConfig(CheckConfig):
    preset: str = "tiny"
    """Model preset when no trained checkpoint exists in this run (random weights)."""
    batch: int = Field(default=8, ge=1)
    """Prompts decoded together."""
    prompt_tokens: int = Field(default=32, ge=1)
    new_tokens: int = Field(default=16, ge=1)
    rounds: int = Field(default=3, ge=1)
    """Timed decoding rounds per model (alternating), after one warm-up each."""
    held_out_sequences: int = Field(default=16, ge=1)
    """Sequences for next-token agreement and loss."""

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return check_preset(value)


def greedy_decode(model, prompts, new_tokens: int):
    """Greedy continuation without a cache (the same work for both models): [B, T + new_tokens]."""
    import torch

    tokens = prompts
    with torch.inference_mode():
        for _ in range(new_tokens):
            window = tokens[:, -model.config.max_seq_len:]
            next_token = model(window)[:, -1, :].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
    return tokens


def agreement_and_losses(reference, candidate, sequences) -> tuple[float, float, float, int]:
    """(agreement, loss_reference, loss_candidate, positions) on [B, T + 1] sequences."""
    import torch
    import torch.nn.functional as F

    inputs, targets = sequences[:, :-1], sequences[:, 1:]
    with torch.inference_mode():
        logits_ref, logits_cand = reference(inputs).float(), candidate(inputs).float()
    agree = (logits_ref.argmax(-1) == logits_cand.argmax(-1)).sum().item()
    positions = targets.numel()
    loss_ref = F.cross_entropy(logits_ref.reshape(-1, logits_ref.size(-1)), targets.reshape(-1)).item()
    loss_cand = F.cross_entropy(logits_cand.reshape(-1, logits_cand.size(-1)), targets.reshape(-1)).item()
    return agree / positions, loss_ref, loss_cand, positions


class CompressionCheck:
    name = "compression"
    description = "int8 dynamic quantization vs full precision: decode speedup, next-token agreement, loss delta."
    Config = CompressionConfig
    requires_declared_gpus = False  # dynamic int8 quantization runs on the CPU
    metrics = (
        MetricSpec("output_tokens_per_s", "tokens/s", "higher",
                   "batch · new tokens / median wall time over rounds (greedy decoding, no cache)",
                   "decoding throughput of the full-precision and the int8 model", stats=("fp32", "int8")),
        MetricSpec("speedup", "ratio", "higher", "median over paired rounds of fp32 decode time / int8 decode time",
                   "what int8 dynamic quantization buys in decoding speed"),
        MetricSpec("next_token_agreement", "ratio", "higher",
                   "positions with equal argmax next token / positions (held-out sequences)",
                   "how often the int8 model picks the full-precision model's greedy token"),
        MetricSpec("loss_fp32", "nats", None, "cross-entropy on held-out sequences", "full-precision quality"),
        MetricSpec("loss_int8", "nats", None, "cross-entropy on held-out sequences", "int8 quality"),
        MetricSpec("loss_delta", "nats", "lower", "loss int8 − loss fp32", "what int8 costs in quality"),
    )

    def run(self, ctx: CheckContext, config: CompressionConfig) -> CheckResult:
        import torch

        from workloads.model import GPT, get_preset, quantize_int8
        from workloads.train_config import TrainConfig
        from workloads.train_data import SyntheticBigramData

        result = CheckResult(self.name, declared=self.metrics)
        from workloads.checkpointing import latest_checkpoint, load_for_inference

        trained = ctx.outputs.trained_checkpoint_dir
        if trained and latest_checkpoint(trained) is not None:

            model, model_config = load_for_inference(trained)
            source = f"trained:{trained}"
        else:
            torch.manual_seed(0)
            model_config = get_preset(config.preset)
            model, source = GPT(model_config).eval(), f"random:{config.preset}"
        quantized = quantize_int8(model)
        seq_len = min(model_config.max_seq_len, config.prompt_tokens + config.new_tokens)
        data = SyntheticBigramData(TrainConfig().seed)  # the training distribution
        prompts = data.batch(HELD_OUT_FIRST_STEP, config.batch, seq_len)[:, :config.prompt_tokens]
        held_out = data.batch(HELD_OUT_FIRST_STEP + 1, config.held_out_sequences,
                              min(model_config.max_seq_len, 128))

        timings: dict[str, list[float]] = {"fp32": [], "int8": []}
        models = {"fp32": model, "int8": quantized}
        for label, candidate in models.items():
            greedy_decode(candidate, prompts, 2)  # warm-up: kernels and allocator
        # Paired rounds, order flipped every round: each round's ratio sees the same machine state on both sides,
        # so a burst of load elsewhere moves one round, not the median of the ratios.
        for round_index in range(config.rounds):
            for label in (("fp32", "int8") if round_index % 2 == 0 else ("int8", "fp32")):
                started = time.perf_counter()
                greedy_decode(models[label], prompts, config.new_tokens)
                timings[label].append(time.perf_counter() - started)
        produced = config.batch * config.new_tokens
        rates = {label: produced / statistics.median(seconds) for label, seconds in timings.items()}
        speedup = statistics.median(fp32 / int8 for fp32, int8 in zip(timings["fp32"], timings["int8"]))
        agreement, loss_fp32, loss_int8, positions = agreement_and_losses(model, quantized, held_out)

        for label, rate in rates.items():
            result.add_metric(f"output_tokens_per_s.{label}", rate)
        result.add_metric("speedup", speedup)
        result.add_metric("next_token_agreement", agreement)
        result.add_metric("loss_fp32", loss_fp32)
        result.add_metric("loss_int8", loss_int8)
        result.add_metric("loss_delta", loss_int8 - loss_fp32)
        result.details.update(model=source, positions=positions, batch=config.batch,
                              prompt_tokens=config.prompt_tokens, new_tokens=config.new_tokens,
                              timings_s=timings, quantized_modules="torch.nn.Linear (qint8 dynamic)",
                              threads=torch.get_num_threads())
        return result
