"""The KV cache: decoding token by token (and prefilling in chunks) gives the logits of a full recomputation."""
from __future__ import annotations

import pytest
import torch

from mobilevlm_agent.model.random_init import random_model


@pytest.fixture(params=["tiny-vlm", "tiny-llama"])  # MHA and GQA
def llm(request):
    return random_model(request.param, seed=1).llm


def test_decode_one_matches_full_recompute(llm):
    ids = torch.randint(0, llm.config.vocab_size, (1, 24))
    with torch.no_grad():
        full = llm(ids)  # no cache: plain causal forward
        llm.setup_cache(1, 64)
        steps = [llm.prefill(llm.embed_tokens(ids[:, :10]))]
        for pos in range(10, 24):
            steps.append(llm.decode_one(ids[:, pos], pos))
    llm.clear_cache()
    cached = torch.stack(steps[:-1], dim=1)  # logits predicting positions 10..23
    torch.testing.assert_close(cached, full[:, 9:23], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps[-1], full[:, 23], atol=1e-5, rtol=1e-5)


def test_chunked_prefill_continuation_matches_full(llm):
    ids = torch.randint(0, llm.config.vocab_size, (1, 30))
    with torch.no_grad():
        full = llm(ids)
        llm.setup_cache(1, 64)
        llm.prefill(llm.embed_tokens(ids[:, :12]))
        second = llm.forward(ids[:, 12:], start=12)  # several new positions on top of the cache
    llm.clear_cache()
    torch.testing.assert_close(second, full[:, 12:], atol=1e-5, rtol=1e-5)


def test_cache_is_reused_not_reallocated(llm):
    llm.setup_cache(1, 100)
    buffer = llm.layers[0].self_attn.kv_cache.k
    llm.setup_cache(1, 50)
    assert llm.layers[0].self_attn.kv_cache.k is buffer
    llm.clear_cache()


def test_start_without_cache_is_an_error(llm):
    with pytest.raises(RuntimeError, match="needs a KV cache"):
        llm(torch.zeros(1, 2, dtype=torch.long), start=5)


def test_growing_the_cache_keeps_its_contents(llm):
    ids = torch.randint(0, llm.config.vocab_size, (1, 80))
    with torch.no_grad():
        full = llm(ids)
        llm.setup_cache(1, 10)
        llm.prefill(llm.embed_tokens(ids[:, :10]))
        llm.setup_cache(1, 80)  # must grow, not wipe
        assert llm.cache_capacity >= 80
        rest = llm.forward(ids[:, 10:], start=10)
    llm.clear_cache()
    torch.testing.assert_close(rest, full[:, 10:], atol=1e-5, rtol=1e-5)


def test_cache_made_under_inference_mode_is_writable_later(llm):
    ids = torch.randint(0, llm.config.vocab_size, (1, 8))
    with torch.inference_mode():
        llm.setup_cache(1, 32)
        llm.prefill(llm.embed_tokens(ids))
    with torch.no_grad():
        llm.forward(ids[:, :2], start=8)  # writes the cache outside inference mode
    llm.clear_cache()
