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


def test_next_turn_reuses_the_cached_prefix_and_decodes_like_uncached_greedy(model):
    """A chat's second turn carries the first turn's prompt and answer: the slot that served the first turn still
    holds their keys and values, so only the new tokens are prefilled, and the answer is the uncached one."""
    first_prompt = [256, *b"a system prompt of twenty"]
    loads = []
    engines = {}
    for caching in (True, False):
        engine = BatchingEngine(model, CONFIG, EngineSettings(max_batch=4, max_wait_ms=0, prefix_caching=caching),
                                load_observer=loads.append)
        engine.start()
        engines[caching] = engine
        try:
            async def conversation():
                params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
                handle = engine.submit(first_prompt, params)
                answer = [event async for event in handle.events()]
                second_prompt = [*first_prompt, *greedy_reference(model, first_prompt, 8), *b" and then?"]
                return second_prompt, answer[-1], await collect(engine, second_prompt, params)

            second_prompt, first_final, second = asyncio.run(conversation())
        finally:
            engine.stop()
        assert second == (bytes(greedy_reference(model, second_prompt, 8)).decode("utf-8", errors="replace"), 8,
                          "length")
        assert first_final.cached_tokens == 0
    cached, uncached = engines[True], engines[False]
    # The slot holds the first prompt and the 7 answer tokens fed back to the model (the 8th was never decoded).
    assert cached.prefix_hits == len(first_prompt) + 7
    assert cached.prefix_queries == len(first_prompt) + len(second_prompt)
    assert (uncached.prefix_hits, uncached.prefix_queries) == (0, 0)
    assert max(load.kv_usage for load in loads) > 0 and loads[-1].kv_usage == 0 and loads[-1].running == 0


def test_a_short_shared_prefix_is_not_reused(model):
    """Prompts sharing only BOS and a few bytes (under PREFIX_MIN_TOKENS) are prefilled whole and count no hit."""
    engine = make_engine(model)
    try:
        async def run():
            params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
            await collect(engine, [256, *b"hello there"], params)
            return await collect(engine, [256, *b"hello world"], params)

        text, _, _ = asyncio.run(run())
    finally:
        engine.stop()
    assert engine.prefix_hits == 0 and engine.prefix_queries == 24
    assert text == bytes(greedy_reference(model, [256, *b"hello world"], 4)).decode("utf-8", errors="replace")


def test_a_vanishing_temperature_samples_the_greedy_token_instead_of_failing(model):
    """temperature 1e-300 is within the API's [0, 2]: logits / t overflowed to inf and the softmax to NaN (found
    by the schema fuzz test); sampling now sees the greedy token with probability 1."""
    engine = make_engine(model)
    try:
        async def run():
            return await collect(engine, [256, *b"tiny"], SamplingParams(max_tokens=4, temperature=1e-300, seed=1,
                                                                          ignore_eos=True))

        text, tokens, finish = asyncio.run(run())
    finally:
        engine.stop()
    greedy = bytes(greedy_reference(model, [256, *b"tiny"], 4)).decode("utf-8", errors="replace")
    assert (text, tokens, finish) == (greedy, 4, "length")
