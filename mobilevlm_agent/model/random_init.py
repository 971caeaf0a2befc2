"""Random-weight checkpoints of any named config: for tests, benchmarks and trying the stack without a download."""
from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from mobilevlm_agent.conversation import VICUNA_SYSTEM
from mobilevlm_agent.model.checkpoint import save_pretrained
from mobilevlm_agent.model.config import MobileVLMConfig
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.tokenizer import Tokenizer, train_tokenizer

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("cube", "ball", "cylinder", "cone")


def builtin_corpus() -> list[str]:
    """A small robot-domain corpus, enough to train a few-hundred-piece tokenizer offline."""
    lines = [VICUNA_SYSTEM, "USER: ASSISTANT: What is in the image? Describe the scene. Go to the door and stop."]
    for colour, shape, where in itertools.product(COLOURS, SHAPES, ("left", "right", "ahead")):
        lines.append(f"There is a {colour} {shape} on the {where}. Is there a {colour} {shape} in the image? Yes, 2 of them.")
    return lines


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """HF-style init: normal(0, std) for linear/embedding/conv weights, zero biases, unit norms."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def random_model(config: MobileVLMConfig | str, seed: int = 0) -> MobileVLM:
    config = MobileVLMConfig.from_name(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    model = MobileVLM(config)
    init_weights(model)
    return model.eval()


def random_checkpoint(config: MobileVLMConfig | str, out: str | os.PathLike, seed: int = 0, tokenizer: str | os.PathLike | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a random-weight checkpoint directory (config.json, model.safetensors, tokenizer.model)."""
    model = random_model(config, seed)
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer is None:
            vocab = min(model.config.llm.vocab_size, 512)
            tokenizer = train_tokenizer(builtin_corpus(), Path(tmp) / "tokenizer.model", vocab_size=vocab)
        model.tokenizer = Tokenizer(tokenizer)
        return save_pretrained(model, out, dtype=dtype)
