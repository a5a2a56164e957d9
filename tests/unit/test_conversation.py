"""Multi-turn chat in the load generator: history with the server's answers, conversations that end and start anew,
turns that fit the context, and the client-side prompt-reuse figures."""

from __future__ import annotations

import pytest

from dcforge.checks.inference import InferenceConfig
from dcforge.steps.serving.settings import fitted_prompt_tokens
from loadtests.conversation import MESSAGE_OVERHEAD_TOKENS, Conversation
from loadtests.llm_protocol import request_body
from loadtests.metrics import prefix_reuse
from workloads.records import RequestRecord


def test_each_turn_carries_the_history_with_the_answers_and_the_conversation_restarts_after_its_turns():
    talk = Conversation(turns=3)
    assert talk.start_turn("be brief", "q1", 8) == ("be brief", [], 1)
    talk.answered("q1", "a1")
    system, history, turn = talk.start_turn("another system prompt", "q2", 8)
    assert (system, turn) == ("be brief", 2)  # a conversation keeps its system prompt
    body = request_body("chat", "m", "q2", 8, True, 0.0, system=system, history=history)
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
                                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    talk.answered("q2", "a2")
    assert talk.start_turn("", "q3", 8)[1:] == ([{"role": "user", "content": "q1"},
                                                 {"role": "assistant", "content": "a1"},
                                                 {"role": "user", "content": "q2"},
                                                 {"role": "assistant", "content": "a2"}], 3)
    talk.answered("q3", "a3")
    assert talk.start_turn("new", "q4", 8) == ("new", [], 1)  # three turns done: a new conversation


def test_a_turn_that_would_not_fit_the_budget_or_follows_a_failure_starts_a_new_conversation():
    talk = Conversation(turns=5, budget_tokens=4 * MESSAGE_OVERHEAD_TOKENS + 21 + 8)
    talk.start_turn("", "q" * 10, 8)
    talk.answered("q" * 10, "a" * 10)
    assert talk.start_turn("", "x", 8)[2] == 2  # 3 messages and the reply tag + 21 bytes + 8 answer tokens fit
    talk.answered("x", "y")
    assert talk.start_turn("", "q" * 10, 8)[2] == 1  # 5 messages would not
    talk.reset()
    assert (talk.history, talk.turn) == ([], 0)


def test_turns_need_closed_loop_chat_and_prompts_shrink_so_the_last_turn_fits():
    config = InferenceConfig.model_validate({"turns": 2, "promptTokens": 64, "maxTokens": 32})
    # 256 - 2 x (32 + 48) = 96 tokens for two questions of up to 1.25 x the mean
    assert fitted_prompt_tokens(config, 256) == 38
    assert fitted_prompt_tokens(InferenceConfig.model_validate({"promptTokens": 64, "maxTokens": 32}), 256) == 64
    for bad in ({"turns": 2, "endpoint": "completions"}, {"turns": 2, "arrival": "poisson"}):
        with pytest.raises(ValueError, match="needs endpoint chat and arrival closed"):
            InferenceConfig.model_validate(bad)
    with pytest.raises(ValueError, match="over 4 turns"):
        fitted_prompt_tokens(InferenceConfig.model_validate({"turns": 4, "maxTokens": 32}), 256)


def test_client_side_prompt_reuse_figures():
    def record(turn, prompt, cached, ttft, ok=True, warmup=False):
        return RequestRecord(start=1.0, end=2.0, ok=ok, ttft_s=ttft, e2e_s=1.0, output_tokens=4, prompt_tokens=prompt,
                             turn=turn, cached_tokens=cached, warmup=warmup)

    figures = prefix_reuse([record(1, 100, 0, 0.2), record(2, 200, 150, 0.05), record(3, 300, None, 0.1),
                            record(2, 200, 200, 9.0, ok=False), record(2, 100, 100, 9.0, warmup=True)])
    assert figures == {"cached_prompt_fraction": pytest.approx(150 / 300), "ttft_first_turn_ms.mean": 200.0,
                       "ttft_later_turns_ms.mean": pytest.approx(75.0)}
    assert prefix_reuse([record(0, 10, None, 0.1)]) == {}


def test_every_environment_s_inference_fits_the_model_it_serves_on_a_full_run():
    """On a full run the inference checks serve train's model (modelSource auto): its context (train's seqLen) must
    hold every turn's question and answer, or `make accept` errors at the inference check."""
    from dcforge.checks import load_check
    from dcforge.spec import load_environment
    from workloads.model import get_preset

    for name in ("local", "cluster", "dev", "prod", "gpu"):
        acceptance = load_environment(name).spec.acceptance
        train = acceptance.settings.get("train", {})
        for check in ("inference", "inference_failover"):
            if check not in acceptance.checks:
                continue
            config = load_check(check).Config.model_validate(acceptance.settings.get(check, {}))
            contexts = [get_preset(config.preset).max_seq_len]
            if "train" in acceptance.checks and config.model_source != "random":
                contexts.append(train.get("seqLen", get_preset(train.get("preset", config.preset)).max_seq_len))
            for context in contexts:
                assert fitted_prompt_tokens(config, context) >= 1, (name, check, context)
