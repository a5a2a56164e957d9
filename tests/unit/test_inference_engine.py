"""The continuous-batching engine: batched decoding gives the same tokens as one-at-a-time, limits and stops."""

from __future__ import annotations

import asyncio

import pytest
import torch

from workloads.model import GPT, GPTConfig
from workloads.serving.engine import BatchingEngine, EngineOverloaded, SamplingParams
from workloads.serving.settings import EngineSettings

CONFIG = GPTConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=64)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def make_engine(model: GPT, max_batch: int = 8, max_pending: int = 64) -> BatchingEngine:
    engine = BatchingEngine(model, CONFIG, EngineSettings(max_batch=max_batch, max_wait_ms=20), max_pending=max_pending)
    engine.start()
    return engine


async def collect(engine: BatchingEngine, prompt: list[int], params: SamplingParams) -> tuple[str, int, str]:
    handle = engine.submit(prompt, params)
    text, last = "", None
    async for last in handle.events():
        text += last.text
    return text, last.completion_tokens, last.finish_reason


def greedy_reference(model: GPT, prompt: list[int], steps: int) -> list[int]:
    """Full-sequence forward without any cache: the ground truth for greedy decoding."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(torch.tensor([ids]))[0, -1]
            logits[257] = float("-inf")
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):]


def test_concurrent_requests_decode_exactly_like_uncached_greedy(model):
    prompts = [[256, *b"hello"], [256, *b"a much longer prompt here"], [256, *b"x"], [256, *b"batching!"]]
    engine = make_engine(model)
    try:
        async def run_all():
            params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
            return await asyncio.gather(*(collect(engine, p, params) for p in prompts))

        results = asyncio.run(run_all())
    finally:
        engine.stop()
    for prompt, (text, tokens, finish) in zip(prompts, results):
        expected = bytes(t for t in greedy_reference(model, prompt, 12) if t < 256).decode("utf-8", errors="replace")
        assert (text, tokens, finish) == (expected, 12, "length")


def test_seed_makes_sampling_reproducible_and_stop_truncates(model):
    engine = make_engine(model)
    try:
        async def run():
            params = SamplingParams(max_tokens=20, temperature=1.0, seed=7, ignore_eos=True)
            first = await collect(engine, [256, 65, 66], params)
            second = await collect(engine, [256, 65, 66], params)
            other = await collect(engine, [256, 65, 66], SamplingParams(max_tokens=20, seed=8, ignore_eos=True))
            return first, second, other

        first, second, other = asyncio.run(run())
        assert first == second
        assert first[0] != other[0]
        # Stopping on a piece of the known output: generation ends just before it, finish_reason "stop".
        stop = first[0][5:7]
        cut = first[0].index(stop)

        async def stopped():
            return await collect(engine, [256, 65, 66],
                                 SamplingParams(max_tokens=20, temperature=1.0, seed=7, stop=(stop,), ignore_eos=True))

        text, _, finish = asyncio.run(stopped())
        assert (text, finish) == (first[0][:cut], "stop")
    finally:
        engine.stop()


def test_context_limit_ends_generation_and_slots_are_reused(model):
    engine = make_engine(model, max_batch=2)
    try:
        async def run():
            long_prompt = [256, *([65] * 60)]
            return await asyncio.gather(*(collect(engine, long_prompt, SamplingParams(max_tokens=50, temperature=0,
                                                                                      ignore_eos=True))
                                          for _ in range(5)))

        results = asyncio.run(run())
    finally:
        engine.stop()
    # 61 prompt tokens in a 64-token context: every request gets the same 3 tokens, 5 requests through 2 slots.
    assert [r[1:] for r in results] == [(3, "length")] * 5
    assert len({r[0] for r in results}) == 1


def test_submit_refuses_when_the_queue_is_full_and_rejects_oversized_prompts(model):
    engine = BatchingEngine(model, CONFIG, EngineSettings(max_batch=1), max_pending=2)  # not started: nothing drains

    async def run():
        params = SamplingParams(max_tokens=1)
        engine.submit([1], params)
        engine.submit([1], params)
        with pytest.raises(EngineOverloaded):
            engine.submit([1], params)
        with pytest.raises(ValueError):
            engine.submit([1] * 64, params)

    asyncio.run(run())
