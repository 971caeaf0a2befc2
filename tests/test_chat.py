"""Splicing visual tokens, multi-turn chat with KV reuse, the context guard, and bad text."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.errors import ContextLengthError, InputError
from mobilevlm_agent.generate import SamplingParams
from mobilevlm_agent.preprocess import load_image, preprocess
from mobilevlm_agent.tokenizer import IMAGE_TOKEN_INDEX

GREEDY = SamplingParams(max_new_tokens=10)


def test_spliced_length_and_positions(tiny_model, tokenizer, scene_image):
    ids = tokenizer.encode_with_image("USER: <image>\nWhat is it? ASSISTANT:")
    with torch.no_grad():
        feats = tiny_model.encode_images(preprocess(load_image(scene_image), 112))
        embeds = tiny_model.embed(ids, feats)
    n_vis = tiny_model.config.num_visual_tokens
    assert feats.shape == (1, n_vis, 64)
    assert embeds.shape[1] == len(ids) - 1 + n_vis
    pos = ids.index(IMAGE_TOKEN_INDEX)
    torch.testing.assert_close(embeds[0, pos : pos + n_vis], feats[0])
    torch.testing.assert_close(embeds[0, pos + n_vis], tiny_model.llm.embed_tokens.weight[ids[pos + 1]])


def test_image_count_mismatch(tiny_model, tokenizer):
    ids = tokenizer.encode_with_image("<image> and <image>")
    with pytest.raises(InputError, match="2 <image> placeholder"):
        tiny_model.embed(ids, torch.zeros(1, 16, 64))


def test_second_turn_reuses_cache_and_matches_a_fresh_session(tiny_model, scene_image):
    chat = ChatSession(tiny_model)
    first = chat.ask("What is in the image?", image=scene_image, params=GREEDY)
    second = chat.ask("And on the left?", params=GREEDY)
    fresh = ChatSession(tiny_model)
    fresh.set_image(scene_image)
    fresh.conversation = chat.conversation.copy()
    fresh.conversation.messages[-2:] = []
    tiny_model.llm.clear_cache()  # a cold start: the replay prefills everything
    replay = fresh.ask("And on the left?", params=GREEDY)
    # the second turn prefilled neither the image nor the system prompt again (at least 30 text tokens)
    assert second.timings["prefill_tokens"] <= replay.timings["prefill_tokens"] - tiny_model.config.num_visual_tokens - 30
    assert replay.token_ids == second.token_ids
    assert first.visual_tokens == tiny_model.config.num_visual_tokens


def test_a_new_session_reuses_the_cached_system_prompt(tiny_model, scene_image):
    ChatSession(tiny_model).ask("What is in the image?", image=scene_image, params=GREEDY)
    other_image = np.full((40, 60, 3), 200, np.uint8)
    warm = ChatSession(tiny_model).ask("Describe the scene.", image=other_image, params=GREEDY)
    tiny_model.llm.clear_cache()
    cold = ChatSession(tiny_model).ask("Describe the scene.", image=other_image, params=GREEDY)
    system_tokens = len(tiny_model.tokenizer.encode(ChatSession(tiny_model).template.system, bos=True))
    # the first image's visual tokens were not mistaken for the second's: only the text prefix was reused
    assert cold.timings["prefill_tokens"] - warm.timings["prefill_tokens"] >= system_tokens - 2
    assert cold.timings["prefill_tokens"] - warm.timings["prefill_tokens"] < system_tokens + 8
    assert warm.token_ids == cold.token_ids


def test_a_prefilled_image_leaves_only_the_question_to_prefill(tiny_model, scene_image):
    question = "What colour is the ball?"
    tiny_model.llm.clear_cache()
    cold = ChatSession(tiny_model).ask(question, image=scene_image, params=GREEDY)
    tiny_model.llm.clear_cache()
    chat = ChatSession(tiny_model)
    chat.set_image(scene_image)
    assert chat.prefill_image() > 0
    assert chat.prefill_image() == 0.0  # already in the cache
    warm = chat.ask(question, params=GREEDY)
    question_tokens = len(tiny_model.tokenizer.encode("\n" + question + " ASSISTANT:", bos=False))
    assert cold.timings["prefill_tokens"] >= tiny_model.config.num_visual_tokens + question_tokens
    assert warm.timings["prefill_tokens"] <= question_tokens + 1
    assert warm.token_ids == cold.token_ids


def test_prefill_image_without_an_image_is_a_clear_error(tiny_model):
    with pytest.raises(InputError, match="needs an image"):
        ChatSession(tiny_model).prefill_image()


def test_streamed_text_equals_the_answer(tiny_model, scene_image):
    pieces = []
    answer = ChatSession(tiny_model).ask("Describe the scene.", image=scene_image, params=SamplingParams(max_new_tokens=16, temperature=0.9, seed=1), on_text=pieces.append)
    assert "".join(pieces).strip() == answer.text
    assert answer.finish_reason in {"eos", "length"}


def test_new_image_starts_a_new_conversation(tiny_model, scene_image):
    chat = ChatSession(tiny_model)
    chat.ask("What is it?", image=scene_image, params=GREEDY)
    chat.ask("Sure?", image=np.zeros((50, 80, 3), np.uint8), params=GREEDY)
    assert len(chat.conversation.messages) == 2


def test_prompt_over_the_context_window_is_a_clear_error(tiny_model, scene_image):
    chat = ChatSession(tiny_model)
    with pytest.raises(ContextLengthError, match=r"positions .* context window is 512"):
        chat.ask("cube " * 600, image=scene_image, params=GREEDY)
    assert chat.conversation.messages == []  # the failed turn is not left in the history
    assert chat.ask("ok?", params=GREEDY).text is not None


def test_generation_stops_at_the_window(tiny_model):
    chat = ChatSession(tiny_model)
    words = 400
    while True:  # a question that leaves exactly a few positions of the 512-token window free
        conv = chat.conversation.copy()
        conv.add_user("cube " * words)
        conv.add_assistant(None)
        used = len(chat.tokenizer.encode_with_image(conv.prompt()))
        if used <= 505:
            break
        words -= 1
    answer = chat.ask("cube " * words, params=SamplingParams(max_new_tokens=400))
    assert answer.finish_reason == "context"
    assert len(answer.token_ids) == 512 - used


def test_non_utf8_text_is_rejected(tiny_model):
    bad = b"caf\xe9".decode("utf-8", errors="surrogateescape")
    with pytest.raises(InputError, match="not valid UTF-8"):
        ChatSession(tiny_model).ask(bad)


def test_text_only_model_refuses_images(tokenizer_path, scene_image):
    from mobilevlm_agent.model.random_init import random_model
    from mobilevlm_agent.tokenizer import Tokenizer

    model = random_model("tiny-llama")
    model.tokenizer = Tokenizer(tokenizer_path)
    with pytest.raises(InputError, match="text-only model"):
        ChatSession(model).ask("hi", image=scene_image)
    assert ChatSession(model).ask("hi", params=GREEDY).visual_tokens == 0


def test_two_sessions_sharing_a_model_do_not_corrupt_each_other(tiny_model, scene_image):
    a, b = ChatSession(tiny_model), ChatSession(tiny_model)
    a.ask("What is in the image?", image=scene_image, params=GREEDY)
    b.ask("Something else entirely, much longer than the first prompt was", params=GREEDY)
    second = a.ask("And on the left?", params=GREEDY)
    solo = ChatSession(tiny_model)
    solo.ask("What is in the image?", image=scene_image, params=GREEDY)
    assert solo.ask("And on the left?", params=GREEDY).token_ids == second.token_ids
