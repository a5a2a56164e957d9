"""GPU code paths that only a CUDA machine can run (`make gpu-check` runs them; skipped with the reason elsewhere):
the serving engine on CUDA decodes like the uncached reference on the same device, and the bandwidth workload
measures every GPU and pair."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from workloads.model import GPT, GPTConfig
from workloads.serving.engine import BatchingEngine, SamplingParams, resolve_device
from workloads.serving.settings import EngineSettings

NO_CUDA = "no CUDA device visible to torch (a CPU machine or a CPU build of torch)"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]
CONFIG = GPTConfig(n_layer=2, n_head=2, d_model=64, max_seq_len=128)


def test_auto_device_is_a_gpu_and_the_engine_decodes_there_like_the_reference():
    device = resolve_device("auto")
    assert device.type == "cuda"
    torch.manual_seed(0)
    model = GPT(CONFIG).eval().to(device)
    engine = BatchingEngine(model, CONFIG, EngineSettings(max_batch=4, max_wait_ms=20))
    engine.warm_up()
    engine.start()
    prompt = [256, *b"gpu serving"]
    try:
        async def run():
            handle = engine.submit(prompt, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))
            return [event async for event in handle.events()]

        events = asyncio.run(run())
        sampled = asyncio.run(_sampled(engine, prompt))
    finally:
        engine.stop()
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(10):
            logits = model(torch.tensor([ids], device=device))[0, -1]
            logits[257] = float("-inf")
            ids.append(int(torch.argmax(logits)))
    expected = bytes(t for t in ids[len(prompt):] if t < 256).decode("utf-8", errors="replace")
    assert "".join(e.text for e in events) == expected and events[-1].completion_tokens == 10
    assert sampled[0] == sampled[1]  # a seeded request samples the same tokens on the GPU too


async def _sampled(engine, prompt):
    texts = []
    for _ in range(2):
        handle = engine.submit(prompt, SamplingParams(max_tokens=8, temperature=0.8, seed=7, ignore_eos=True))
        texts.append("".join([event.text async for event in handle.events()]))
    return texts


def test_bandwidth_workload_measures_every_gpu_and_pair(tmp_path):
    from workloads.gpu_bandwidth import main

    output = tmp_path / "bandwidth.json"
    assert main(["--bytes", "64M", "--iters", "5", "--gemm-size", "4096", "--gemm-iters", "10",
                 "--output", str(output)]) == 0
    measured = json.loads(output.read_text())
    count = torch.cuda.device_count()
    assert len(measured["host_device"]) == count and len(measured["device_device"]) == count * (count - 1)
    assert all(r["h2d_gbps"] > 1 and r["d2h_gbps"] > 1 for r in measured["host_device"])
    assert all(r["tflops"] > 1 for r in measured["gemm"])
