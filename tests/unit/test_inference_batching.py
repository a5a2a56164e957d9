"""The batched paths of the serving engine give the same results as one sequence at a time.

Ragged prefill (prompts of different lengths right-padded into one forward), decode batches cut into pieces of
consecutive slots at different lengths, and the engine using both must equal the uncached full forward.
"""

from __future__ import annotations

import asyncio

import torch

from workloads.model import GPT, ROWS_PER_PIECE, CachedBatch, GPTConfig, KVCache
from workloads.serving.engine import BatchingEngine, SamplingParams
from workloads.serving.settings import EngineSettings

CONFIG = GPTConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=64)


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def test_ragged_prefill_in_one_forward_equals_prefill_one_by_one():
    model = _model()
    prompts = [torch.randint(0, 256, (length,)) for length in (3, 11, 7, 1)]
    longest = max(len(p) for p in prompts)
    with torch.inference_mode():
        one_by_one = KVCache(CONFIG, max_slots=4)
        separate = [model(p[None], cache=one_by_one, slots=torch.tensor([slot]),
                          positions=torch.arange(len(p))[None])[0, -1] for slot, p in enumerate(prompts)]
        together = KVCache(CONFIG, max_slots=4)
        padded = torch.zeros(4, longest, dtype=torch.long)
        for row, p in enumerate(prompts):
            padded[row, :len(p)] = p
        logits = model(padded, cache=together, slots=torch.arange(4),
                       positions=torch.arange(longest).expand(4, longest))
        for row, p in enumerate(prompts):
            assert torch.allclose(logits[row, len(p) - 1], separate[row], atol=1e-5)
            assert torch.allclose(together.k[:, row, :, :len(p)], one_by_one.k[:, row, :, :len(p)], atol=1e-6)
        # Decoding on from the padded prefill (its junk past each prompt is overwritten) equals the full forward.
        nxt = torch.randint(0, 256, (4, 1))
        step = model(nxt, cache=together, slots=torch.arange(4),
                     positions=torch.tensor([[len(p)] for p in prompts]))
        for row, p in enumerate(prompts):
            full = model(torch.cat([p, nxt[row]])[None])[0, -1]
            assert torch.allclose(step[row, 0], full, atol=1e-5)


def test_decode_in_pieces_at_different_lengths_and_scattered_slots_equals_full_forward():
    model = _model()
    rows = 2 * ROWS_PER_PIECE + 3
    # Consecutive runs of slots with a gap, and one row out of order: several pieces, each a view of the cache.
    slots = [*range(0, ROWS_PER_PIECE + 2), *range(ROWS_PER_PIECE + 5, 2 * ROWS_PER_PIECE + 5), 40]
    assert len(slots) == rows
    sequences = [torch.randint(0, 256, (2 + (row * 5) % 23,)) for row in range(rows)]
    with torch.inference_mode():
        cache = KVCache(CONFIG, max_slots=48)
        for slot, sequence in zip(slots, sequences):
            model(sequence[None, :-1], cache=cache, slots=torch.tensor([slot]),
                  positions=torch.arange(len(sequence) - 1)[None])
        positions = torch.tensor([[len(s) - 1] for s in sequences])
        batch = CachedBatch(torch.tensor(slots), positions)
        assert len(batch.pieces) >= 4
        assert sum(p.rows.stop - p.rows.start for p in batch.pieces) == rows
        step = model(torch.stack([s[-1:] for s in sequences]), cache=cache, slots=torch.tensor(slots),
                     positions=positions)
        for row, sequence in enumerate(sequences):
            assert torch.allclose(step[row, 0], model(sequence[None])[0, -1], atol=1e-5)


def test_lock_step_rows_in_consecutive_slots_are_one_unmasked_piece():
    batch = CachedBatch(torch.arange(32), torch.full((32, 1), 9))
    assert [(p.rows, p.first_slot, p.key_len, p.mask) for p in batch.pieces] == [(slice(0, 32), 0, 10, None)]


def test_engine_prefills_concurrent_prompts_together_and_decodes_like_uncached_greedy():
    model = _model()
    steps: list[tuple[str, int]] = []
    engine = BatchingEngine(model, CONFIG, EngineSettings(max_batch=16, max_wait_ms=200),
                            observer=lambda phase, batch, seconds: steps.append((phase, batch)))
    prompts = [[256, *([65 + i] * (1 + (i * 7) % 19))] for i in range(12)]
    engine.start()
    try:
        async def run_all():
            async def one(prompt):
                text = ""
                async for event in engine.submit(prompt, SamplingParams(max_tokens=6 + len(prompt) % 5,
                                                                        temperature=0, ignore_eos=True)).events():
                    text += event.text
                return text

            return await asyncio.gather(*(one(p) for p in prompts))

        texts = asyncio.run(run_all())
    finally:
        engine.stop()
    assert max(batch for phase, batch in steps if phase == "prefill") > 1  # prompts really shared a prefill
    for prompt, text in zip(prompts, texts):
        ids = list(prompt)
        with torch.inference_mode():
            for _ in range(6 + len(prompt) % 5):
                logits = model(torch.tensor([ids]))[0, -1]
                logits[257] = float("-inf")
                ids.append(int(torch.argmax(logits)))
        assert text == bytes(t for t in ids[len(prompt):] if t < 256).decode("utf-8", errors="replace")
