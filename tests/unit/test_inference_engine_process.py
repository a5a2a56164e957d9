"""The batching engine in a process of its own (`workloads.serving.engine_process`): same tokens as the engine in a
thread, cancellation, the replica-side queue limit, forward-pass metrics, and what happens when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from workloads.serving.engine import BatchingEngine, EngineOverloaded, SamplingParams, load_model
from workloads.serving.engine_process import EngineProcess, EngineUnavailable
from workloads.serving.settings import EngineSettings, ModelSettings

MODEL = ModelSettings(preset="tiny")
SETTINGS = EngineSettings(max_batch=4, max_wait_ms=20, device="cpu")
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
PROMPTS = [[256, *b"hello"], [256, *b"a longer prompt than that"], [256, *b"x"]]


async def collect(handle) -> tuple[str, int, str]:
    text, last = "", None
    async for last in handle.events():
        text += last.text
    return text, last.completion_tokens, last.finish_reason


def in_thread(prompts: list[list[int]], params: SamplingParams) -> list[tuple[str, int, str]]:
    model, config = load_model(MODEL)
    engine = BatchingEngine(model, config, SETTINGS)
    engine.start()
    try:
        async def run():
            return await asyncio.gather(*(collect(engine.submit(p, params)) for p in prompts))
        return asyncio.run(run())
    finally:
        engine.stop()


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_same_tokens_as_the_engine_thread_cancel_frees_the_slot_and_metrics_reach_the_replica():
    steps, loads = [], []

    async def run():
        engine = EngineProcess(MODEL, SETTINGS, "cpu", max_pending=16, observer=lambda *s: steps.append(s),
                               load_observer=loads.append)
        await engine.start()
        try:
            assert engine.max_context == 256 and engine.pid != os.getpid()
            results = await asyncio.gather(*(collect(engine.submit(p, GREEDY)) for p in PROMPTS))
            long = engine.submit([256, 65], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
            events = long.events()
            await events.__anext__()
            await wait_for(lambda: engine.active_sequences == 1)
            long.cancel()  # what the app does when its client goes away
            await wait_for(lambda: engine.active_sequences == 0)
            return results
        finally:
            await engine.stop()

    results = asyncio.run(run())
    assert results == in_thread(PROMPTS, GREEDY)
    assert {phase for phase, _, _ in steps} == {"prefill", "decode"} and all(s > 0 for _, _, s in steps)
    assert max(batch for phase, batch, _ in steps if phase == "prefill") == 3  # the three prompts prefilled together
    assert (0, 1) in [load[:2] for load in loads] and loads[-1][:3] == (0, 0, 0.0)


def test_the_replica_refuses_past_max_pending_and_an_engine_that_cannot_load_fails_the_start():
    async def run():
        engine = EngineProcess(MODEL, EngineSettings(max_batch=1, max_wait_ms=1, device="cpu"), "cpu", max_pending=2)
        await engine.start()
        try:
            params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
            first, second = engine.submit([256, 65], params), engine.submit([256, 66], params)
            with pytest.raises(EngineOverloaded):
                engine.submit([256, 67], params)
            with pytest.raises(ValueError):
                engine.submit([1] * 256, params)  # no room left in the context
            assert [r[1:] for r in await asyncio.gather(collect(first), collect(second))] == [(3, "length")] * 2
            await wait_for(lambda: engine.queue_depth == 0)
        finally:
            await engine.stop()
        broken = EngineProcess(ModelSettings(checkpoint=Path("/nonexistent/checkpoint")), SETTINGS, "cpu",
                               max_pending=2)
        with pytest.raises(RuntimeError, match="the engine process could not start: .*nonexistent"):
            await broken.start()
        assert broken._process.poll() is not None

    asyncio.run(run())


def test_a_dead_engine_ends_its_requests_with_an_error_and_tells_the_replica():
    lost = []

    async def run():
        engine = EngineProcess(MODEL, SETTINGS, "cpu", max_pending=16, on_lost=lambda: lost.append(True))
        await engine.start()
        try:
            handle = engine.submit([256, 65], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
            events = handle.events()
            await events.__anext__()
            os.kill(engine.pid, signal.SIGKILL)
            last = None
            async for last in events:
                pass
            assert last.finish_reason == "error"
            await wait_for(lambda: engine.lost)
            with pytest.raises(EngineUnavailable):
                engine.submit([256, 65], GREEDY)
        finally:
            await engine.stop()

    asyncio.run(run())
    assert lost == [True]
