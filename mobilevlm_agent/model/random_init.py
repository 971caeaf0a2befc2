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
from mobilevlm_agent.model.llama import RMSNorm
from mobilevlm_agent.model.quant import quantize_model
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


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """HF-style init: normal(0, std) for weights and embeddings, zero biases, unit norms. Overwrites every parameter,
    so it also initialises memory from `to_empty`."""
    for module in model.modules():
        is_norm = isinstance(module, (nn.LayerNorm, RMSNorm))
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                param.zero_()
            elif is_norm:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)


def random_model(config: MobileVLMConfig | str, seed: int = 0, quant: str = "none", group_size: int = 64, vision_quant: str = "none",
                 vision_only: bool = False) -> MobileVLM:
    """Random weights for any config. With `quant`, each piece is quantised as soon as it exists, so peak memory stays
    near the quantised size (a 1.7B model at int4 never holds its fp32 weights at once). `vision_only` leaves the
    decoder on the meta device (no memory): enough to encode images, not to generate."""
    config = MobileVLMConfig.from_name(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = MobileVLM(config)
    if vision_only:  # export_model and bench reject a text-only config with a clear message
        for part in (model.vision, model.projector):
            if part is not None:
                init_weights(part.to_empty(device="cpu"))
        return model.eval()
    quantize_model(model, quant, group_size, vision_quant, materialise=lambda piece: init_weights(piece.to_empty(device="cpu")))
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
