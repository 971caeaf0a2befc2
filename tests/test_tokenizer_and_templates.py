"""Vicuna v1 / plain templates, the <image> chunking rule, and special-token handling."""
from __future__ import annotations

import pytest

from mobilevlm_agent.conversation import VICUNA_SYSTEM, Conversation, get_template
from mobilevlm_agent.errors import CheckpointError, ConfigError
from mobilevlm_agent.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer


def test_v1_single_turn_prompt_string():
    conv = Conversation(get_template("v1"))
    conv.add_user("What is this?", with_image=True)
    conv.add_assistant(None)
    assert conv.prompt() == VICUNA_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT:"


def test_v1_multi_turn_closes_assistant_turns_with_eos():
    conv = Conversation(get_template("v1"))
    conv.add_user("Q1", with_image=True)
    conv.add_assistant("A1")
    conv.add_user("Q2")
    conv.add_assistant(None)
    assert conv.prompt() == VICUNA_SYSTEM + " USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"


def test_plain_template_is_image_then_caption():
    conv = Conversation(get_template("plain"))
    conv.add_user("", with_image=True)
    conv.add_assistant("a red cube")
    assert conv.prompt() == "<image>a red cube\n"


def test_unknown_template():
    with pytest.raises(ConfigError, match="unknown conversation template 'llama9'"):
        get_template("llama9")


def test_image_chunks_are_tokenized_separately_with_one_bos(tokenizer):
    prompt = "A chat. USER: <image>\nWhat colour is the cube? ASSISTANT:"
    ids = tokenizer.encode_with_image(prompt)
    before, after = prompt.split("<image>")
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert ids.count(tokenizer.bos_id) == 1 and ids[0] == tokenizer.bos_id
    split = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[:split] == [tokenizer.bos_id] + tokenizer.sp.EncodeAsIds(before)
    assert ids[split + 1 :] == tokenizer.sp.EncodeAsIds(after)  # its own dummy-prefix, no BOS


def test_eos_string_in_history_maps_to_eos_id(tokenizer):
    ids = tokenizer.encode("yes</s>USER: no", bos=False)
    assert ids == tokenizer.sp.EncodeAsIds("yes") + [tokenizer.eos_id] + tokenizer.sp.EncodeAsIds("USER: no")


def test_round_trip_unicode(tokenizer):
    text = "héllo wörld ✓ 机器人"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_missing_and_corrupt_tokenizer(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer model not found"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot load SentencePiece model"):
        Tokenizer(bad)
