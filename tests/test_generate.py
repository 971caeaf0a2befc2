"""Sampling rules, streaming with stop strings, and the prefill/decode generator."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.generate import SamplingParams, TextStream, generate_tokens, make_generator, sample
from mobilevlm_agent.model.random_init import random_model


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert sample(logits, SamplingParams(temperature=0)) == 1


@given(st.lists(st.floats(-20, 20), min_size=2, max_size=50), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_top_k_1_and_tiny_top_p_pick_the_argmax(values, seed):
    logits = torch.tensor(values)
    best = int(logits.argmax())
    if (logits == logits[best]).sum() > 1:  # ties: any maximal index is right
        return
    g = make_generator(seed, torch.device("cpu"))
    assert sample(logits, SamplingParams(temperature=1.0, top_k=1), generator=g) == best
    assert sample(logits, SamplingParams(temperature=1.0, top_p=1e-6), generator=g) == best


def test_top_p_never_picks_outside_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = make_generator(0, torch.device("cpu"))
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.7), generator=g) for _ in range(300)}
    assert picks == {0, 1}


def test_repetition_penalty_demotes_seen_tokens():
    logits = torch.tensor([2.0, 1.9, -1.0])
    assert sample(logits, SamplingParams(repetition_penalty=1.5), history=[0]) == 1
    assert sample(logits, SamplingParams(repetition_penalty=1.0), history=[0]) == 0


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(100)
    params = SamplingParams(temperature=1.0)
    draw = lambda seed: [sample(logits, params, generator=g) for g in [make_generator(seed, torch.device("cpu"))] for _ in range(20)]
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_invalid_params_are_reported_together():
    with pytest.raises(ConfigError, match="max_new_tokens must be >= 1.*top_p must be in"):
        SamplingParams(max_new_tokens=0, top_p=0)


def test_text_stream_holds_back_partial_stop_strings(tokenizer):
    ids = tokenizer.encode("red cube END more", bos=False)
    stream = TextStream(tokenizer, stop=("END",))
    out = "".join(stream.push(i) for i in ids if not stream.stopped)
    assert stream.stopped
    assert out == "red cube "
    assert "E" not in out


def test_text_stream_waits_for_whole_utf8_characters(tokenizer):
    ids = tokenizer.encode("✓ 机器人", bos=False)
    stream = TextStream(tokenizer)
    deltas = [stream.push(i) for i in ids] + [stream.finish()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)


def test_generator_stops_at_eos_and_max_new_tokens():
    llm = random_model("tiny-llama", seed=3).llm
    embeds = llm.embed_tokens(torch.tensor([[1, 5, 9, 11]]))
    greedy = list(generate_tokens(llm, embeds, SamplingParams(max_new_tokens=12), eos_id=-1))
    assert len(greedy) == 12
    eos = greedy[4]
    cut = list(generate_tokens(llm, embeds, SamplingParams(max_new_tokens=12), eos_id=eos))
    assert cut == greedy[: greedy.index(eos) + 1]


def test_generated_tokens_match_uncached_greedy():
    llm = random_model("tiny-llama", seed=4).llm
    ids = torch.tensor([[1, 17, 42, 99, 7]])
    got = list(generate_tokens(llm, llm.embed_tokens(ids), SamplingParams(max_new_tokens=8), eos_id=-1))
    expected = ids
    with torch.no_grad():
        llm.clear_cache()
        for _ in range(8):  # recompute the whole sequence every step, no cache
            expected = torch.cat([expected, llm(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert got == expected[0, 5:].tolist()
