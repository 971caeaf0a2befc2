"""bench/ttft_floor.py counts the matmuls of a cold time to first token: its count must be what the model runs."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mobilevlm_agent.model.config import MobileVLMConfig
from mobilevlm_agent.model.random_init import random_model

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ttft_floor.py"


def load_script():
    spec = importlib.util.spec_from_file_location("ttft_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def macs_of_linears_and_convs(model, run) -> int:
    """Multiply-accumulates of every Linear and dense Conv2d call during `run` (depthwise convs are not matmuls)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Linear):
            total += inputs[0].numel() // module.in_features * module.in_features * module.out_features
        elif module.groups == 1:
            total += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return total


@pytest.mark.parametrize("name, select_layer", [("demo-vlm", -2), ("demo-vlm", -1), ("tiny-vlm", -2), ("tiny-vlm-mlp", -2)])
@torch.inference_mode()
def test_the_floor_counts_every_matmul_of_a_cold_ttft(name, select_layer):
    """LDPv2 (V2), LDP (V1) and MLP projectors; the ViT cut after its selected layer."""
    floor = load_script()
    config = dataclasses.replace(MobileVLMConfig.from_name(name), vision_select_layer=select_layer)
    model = random_model(config).eval()  # the tower is built with only the layers up to the selected one
    prompt_tokens = 30
    size = model.config.vision.image_size
    pixels = torch.rand(1, 3, size, size)
    ids = torch.randint(3, model.config.llm.vocab_size, (1, prompt_tokens))
    model.llm.setup_cache(1, model.config.num_visual_tokens + prompt_tokens + 1)

    def first_token():
        features = model.encode_images(pixels)
        model.llm.prefill(torch.cat([features, model.llm.embed_tokens(ids)], dim=1), 0)

    ran = macs_of_linears_and_convs(model, first_token)
    counted = sum(s.macs for s in floor.ttft_matmuls(model.config, prompt_tokens) if s.part != "attention")
    assert counted == ran
