"""The GPT model, its presets, tokenizer, KV cache and FLOP formula."""

from __future__ import annotations

import pytest
import torch

from workloads.model import (GPT, PRESETS, ByteTokenizer, GPTConfig, KVCache, flops_per_token, get_preset,
                             non_embedding_params)

SMALL = GPTConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=32)


def _model(config: GPTConfig = SMALL) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval()


def test_presets_and_unknown_preset_lists_the_known_ones():
    assert {"tiny", "125m", "350m", "1.3b"} <= set(PRESETS)
    assert get_preset("tiny", max_seq_len=64).max_seq_len == 64
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny, 125m, 350m, 1.3b"):
        get_preset("huge")


@pytest.mark.parametrize("preset, expected_millions", [("125m", 85), ("350m", 302), ("1.3b", 1208)])
def test_non_embedding_params_match_the_gpt3_sizes(preset, expected_millions):
    assert round(non_embedding_params(PRESETS[preset]) / 1e6) == expected_millions


def test_non_embedding_params_counts_the_real_module():
    model = _model()
    embeddings = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    assert non_embedding_params(SMALL) == sum(p.numel() for p in model.parameters()) - embeddings


def test_flops_per_token_is_the_torchtitan_formula():
    config = PRESETS["125m"]
    attention = 6 * 12 * 12 * 64 * 1024
    assert flops_per_token(config, 1024) == 6 * non_embedding_params(config) + attention


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(d_model=30, n_head=4)


def test_tokenizer_round_trip_and_partial_utf8():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("héllo €", bos=True, eos=True)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids) == "héllo €"
    euro = tokenizer.encode("€")
    assert tokenizer.decode(euro[:2]) == "\ufffd"  # cut in the middle of a character: no exception
    stream = tokenizer.stream_decoder()
    assert [stream.push(i) for i in euro] == ["", "", "€"]
    assert max(ids) < GPTConfig().vocab_size


def test_tied_embeddings_and_training_shapes():
    model = _model()
    assert model.tok_emb.weight.data_ptr() not in {p.data_ptr() for n, p in model.named_parameters()
                                                   if n != "tok_emb.weight"}
    idx = torch.randint(0, SMALL.vocab_size, (3, 10))
    assert model(idx).shape == (3, 10, SMALL.vocab_size)
    loss = model.loss(idx, idx)
    loss.backward()
    assert model.tok_emb.weight.grad is not None
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_cached_prefill_then_decode_equals_full_forward():
    model = _model()
    tokens = torch.randint(0, SMALL.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(SMALL, max_slots=4, max_len=32)
        # Two sequences in slots 3 and 1: prefill 8 tokens each separately, then decode 4 tokens batched.
        prefill = [model(tokens[b:b + 1, :8], cache=cache, slots=torch.tensor([slot]),
                         positions=torch.arange(8)[None]) for b, slot in enumerate((3, 1))]
        decoded = []
        for t in range(8, 12):
            decoded.append(model(tokens[:, t:t + 1], cache=cache, slots=torch.tensor([3, 1]),
                                 positions=torch.tensor([[t], [t]])))
    assert torch.allclose(torch.cat(prefill), full[:, :8], atol=1e-5)
    assert torch.allclose(torch.cat(decoded, dim=1), full[:, 8:], atol=1e-5)


def test_decode_of_sequences_at_different_lengths_in_one_call():
    model = _model()
    short, long = torch.randint(0, SMALL.vocab_size, (1, 5)), torch.randint(0, SMALL.vocab_size, (1, 9))
    with torch.no_grad():
        cache = KVCache(SMALL, max_slots=2)
        model(short[:, :4], cache=cache, slots=torch.tensor([0]), positions=torch.arange(4)[None])
        model(long[:, :8], cache=cache, slots=torch.tensor([1]), positions=torch.arange(8)[None])
        step = model(torch.cat([short[:, 4:], long[:, 8:]]), cache=cache, slots=torch.tensor([0, 1]),
                     positions=torch.tensor([[4], [8]]))
        assert torch.allclose(step[0, 0], model(short)[0, -1], atol=1e-5)
        assert torch.allclose(step[1, 0], model(long)[0, -1], atol=1e-5)


def test_cached_forward_validates_its_arguments():
    model = _model()
    cache = KVCache(SMALL, max_slots=1, max_len=8)
    with pytest.raises(ValueError, match="slots"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache, slots=torch.tensor([0]),
              positions=torch.tensor([[8]]))
