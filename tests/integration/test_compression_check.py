"""The compression check: int8 dynamic quantization against full precision on the same inputs, agreement exact."""

from __future__ import annotations

import time

import pytest
import torch

from dcforge.checks import load_check
from dcforge.checks.compression import CompressionConfig, agreement_and_losses
from dcforge.harness.check import CheckContext
from dcforge.harness.result import Status
from dcforge.spec.loader import load_environment
from workloads.model import GPT, get_preset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_agreement_is_counted_exactly():
    torch.manual_seed(0)
    config = get_preset("tiny", max_seq_len=32)
    reference = GPT(config).eval()
    candidate = GPT(config).eval()
    candidate.load_state_dict(reference.state_dict())
    sequences = torch.randint(0, 256, (3, 17))
    assert agreement_and_losses(reference, candidate, sequences)[:1] == (1.0,)
    with torch.no_grad():
        candidate.final_norm.bias.add_(torch.randn_like(candidate.final_norm.bias))  # moves some argmaxes
        expected = (reference(sequences[:, :-1]).argmax(-1) == candidate(sequences[:, :-1]).argmax(-1)).float().mean()
    agreement, loss_ref, loss_cand, positions = agreement_and_losses(reference, candidate, sequences)
    assert positions == 3 * 16 and agreement == pytest.approx(expected.item(), abs=0) and agreement < 1.0
    assert loss_ref != loss_cand


def test_int8_against_fp32_of_a_random_model(tmp_path):
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 200,
                       log=lambda line: None)
    config = CompressionConfig(batch=2, prompt_tokens=8, new_tokens=4, rounds=1, held_out_sequences=4)
    result = load_check("compression").run(ctx, config)
    assert result.status == Status.PASS, result.reason
    metrics = {name: metric.value for name, metric in result.metrics.items()}
    assert result.details["model"] == "random:tiny" and result.details["positions"] == 4 * 128
    assert 0.0 <= metrics["next_token_agreement"] <= 1.0
    assert metrics["loss_delta"] == pytest.approx(metrics["loss_int8"] - metrics["loss_fp32"])
    assert metrics["speedup"] == pytest.approx(metrics["output_tokens_per_s.int8"] / metrics["output_tokens_per_s.fp32"])
