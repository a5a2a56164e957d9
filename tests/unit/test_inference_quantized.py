"""int8 serving: the quantized model through the engine's KV-cache/batched path picks fp32's greedy tokens."""

from __future__ import annotations

import asyncio

import pytest
import torch

from workloads.model import GPT, GPTConfig, KVCache, quantize_int8
from workloads.serving.engine import BatchingEngine, SamplingParams, load_model, resolve_device
from workloads.serving.settings import EngineSettings, ModelSettings

CONFIG = GPTConfig(n_layer=2, n_head=2, d_model=64, max_seq_len=64)
AGREEMENT_BOUND = 0.85
"""Greedy next-token agreement int8 must reach (this model measures about 0.92); chance is 1/258, and a broken
quantization scores far below (the control test below measures it)."""


@pytest.fixture(scope="module")
def fp32() -> GPT:
    """Linear weights at std 1/sqrt(fan_in) instead of GPT-2's 0.02: with 0.02 the blocks add so little to the
    residual stream that the logits are nearly the embedding's alone, and int8 Linear layers -- even wrong ones --
    could hardly change a greedy token. Here the quantized layers decide the tokens."""
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=module.in_features ** -0.5)
    return model


def cached_greedy_agreement(reference: GPT, candidate: GPT, sequences: torch.Tensor, prompt_len: int) -> float:
    """Exact agreement of argmax next tokens, teacher-forced on `sequences` [B, T], through the serving path: one
    batched prefill of the prompts into KV-cache slots, then batched one-token decode steps (B rows, T=1)."""
    batch, length = sequences.shape
    picks = {}
    with torch.inference_mode():
        for name, model in (("reference", reference), ("candidate", candidate)):
            cache, slots = KVCache(CONFIG, batch), torch.arange(batch)
            logits = model(sequences[:, :prompt_len], cache=cache, slots=slots,
                           positions=torch.arange(prompt_len).expand(batch, prompt_len))
            steps = [logits.argmax(-1)]
            for position in range(prompt_len, length):
                logits = model(sequences[:, position:position + 1], cache=cache, slots=slots,
                               positions=torch.full((batch, 1), position))
                steps.append(logits.argmax(-1))
            picks[name] = torch.cat(steps, dim=1)
    return (picks["reference"] == picks["candidate"]).float().mean().item()


def held_out(batch: int = 16, length: int = 48) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


def test_int8_keeps_fp32_greedy_tokens_through_the_kv_cache(fp32):
    quantized = quantize_int8(fp32)
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules()) == 4 * CONFIG.n_layer
    assert quantized.tok_emb.weight.dtype == torch.float32  # the tied output head stays full precision
    agreement = cached_greedy_agreement(fp32, quantized, held_out(), prompt_len=16)
    assert AGREEMENT_BOUND <= agreement < 1.0, agreement  # < 1: int8 really changed the arithmetic
    assert isinstance(fp32.blocks[0].mlp.up, torch.nn.Linear)  # the fp32 model is left as it was (a copy)


def test_the_agreement_bound_fails_a_broken_quantization(fp32):
    """Control: int8 weights in the wrong order (the MLP down projection's input columns reversed in every block)
    fall below the bound."""
    broken = GPT(CONFIG).eval()
    broken.load_state_dict(fp32.state_dict())
    with torch.no_grad():
        for block in broken.blocks:
            block.mlp.down.weight.copy_(block.mlp.down.weight.flip(1))
    agreement = cached_greedy_agreement(fp32, quantize_int8(broken), held_out(), prompt_len=16)
    assert agreement < AGREEMENT_BOUND, agreement


def engine_texts(model: GPT, prompts: list[list[int]], max_tokens: int) -> list[tuple[str, int, str]]:
    engine = BatchingEngine(model, CONFIG, EngineSettings(max_batch=len(prompts), max_wait_ms=50))
    engine.start()

    async def one(prompt):
        handle = engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
        text, last = "", None
        async for last in handle.events():
            text += last.text
        return text, last.completion_tokens, last.finish_reason

    async def run_all():
        return await asyncio.gather(*(one(prompt) for prompt in prompts))

    try:
        return asyncio.run(run_all())
    finally:
        engine.stop()


def test_int8_engine_serves_concurrent_greedy_requests(fp32):
    """End to end through the batching engine (one prefill and batched decode steps of 8 concurrent requests).
    Free-running texts are not compared with fp32's: one differing token changes everything after it, so the
    exact per-position comparison is the teacher-forced one above."""
    prompts = [[256, *f"request {i} asks".encode()] for i in range(8)]
    results = engine_texts(quantize_int8(fp32), prompts, 16)
    assert [(tokens, finish) for _, tokens, finish in results] == [(16, "length")] * 8
    assert len({text for text, _, _ in results}) > 1  # the prompts steer the int8 model: not one constant output


def test_int8_model_loads_quantized_and_serves_on_the_cpu_only():
    model, _ = load_model(ModelSettings(preset="tiny", quantize="int8"))
    assert isinstance(model.blocks[0].attn.qkv, torch.ao.nn.quantized.dynamic.Linear)
    assert ModelSettings(quantize="int8").precision == "int8" and ModelSettings().precision == "fp32"
    assert resolve_device("auto", "int8") == torch.device("cpu")
    with pytest.raises(ValueError, match="--quantize int8 cannot serve on --device cuda:0"):
        resolve_device("cuda:0", "int8")


@pytest.mark.parametrize("flags, named", [(["--quantize", "int4"], "--quantize 'int4' is unknown"),
                                          (["--quantize", "int8", "--device", "cuda"], "--quantize int8 cannot serve")])
def test_bad_quantize_flag_is_one_line_and_exit_2(flags, named):
    import os
    import subprocess
    import sys

    completed = subprocess.run([sys.executable, "-m", "workloads.serve", "--port", "0", *flags], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "DCFORGE_API_KEY": "k"})
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and named in completed.stderr, completed.stderr


def test_inference_check_settings_pass_quantize_and_refuse_int8_on_cuda():
    from pydantic import ValidationError

    from dcforge.steps.serving.settings import ServingLoadConfig

    assert ServingLoadConfig(quantize="int8").quantize == "int8"
    with pytest.raises(ValidationError, match="quantize int8 runs on the CPU only"):
        ServingLoadConfig(quantize="int8", device="cuda")
    with pytest.raises(ValidationError):
        ServingLoadConfig(quantize="int4")
