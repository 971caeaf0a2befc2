"""Weight-only int8/int4 quantisation: kernels agree with dequantised weights, models stay close to fp32, and the
`bench --json` contract holds."""
from __future__ import annotations

import json

import pytest
import torch

from mobilevlm_agent.bench import vision_quality
from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.model.quant import (
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    quantize_int4,
    quantize_model,
    weight_bytes,
)
from mobilevlm_agent.model.random_init import random_model


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.detach().flatten().float(), b.detach().flatten().float(), dim=0))


@pytest.fixture
def linear():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 384, bias=True)
    torch.nn.init.normal_(layer.bias, std=0.1)
    return layer


def test_int8_and_int4_layers_track_fp32(linear):
    x = torch.randn(5, 256)
    ref = linear(x)
    assert cosine(Int8Linear(linear.weight, linear.bias)(x), ref) > 0.9995
    assert cosine(Int4Linear(linear.weight, 64, linear.bias)(x), ref) > 0.99
    assert cosine(Int4Linear(linear.weight, 32, linear.bias)(x), ref) > cosine(Int4Linear(linear.weight, 128, linear.bias)(x), ref)


def test_int4_kernel_equals_its_dequantised_weights(linear):
    x = torch.randn(3, 256)
    q, scale, zero = quantize_int4(linear.weight.detach(), 64)
    expected = x @ dequantize_int4(q, scale, zero).T + linear.bias
    assert torch.allclose(Int4Linear(linear.weight, 64, linear.bias)(x), expected, atol=0.02)  # bf16 activations
    assert q.min() >= 0 and q.max() <= 15


def test_quantised_model_logits_stay_close_and_weights_shrink():
    ids = torch.tensor([[1, 40, 77, 300, 5, 9, 120]])
    ref = random_model("tiny-vlm-v2", seed=2)
    with torch.inference_mode():
        ref_logits = ref.llm(ids)
    sizes = {"none": weight_bytes(ref.llm)}
    for mode, floor in (("bf16", 0.999), ("int8", 0.999), ("int4", 0.98)):
        model = quantize_model(random_model("tiny-vlm-v2", seed=2), mode, group_size=32)
        sizes[mode] = weight_bytes(model.llm)
        with torch.inference_mode():
            assert cosine(model.llm(ids), ref_logits) > floor, mode
    assert sizes["int4"] < sizes["int8"] < sizes["bf16"] < sizes["none"]


def test_piecewise_quantised_random_model_matches_quantising_afterwards():
    ids = torch.tensor([[1, 5, 9, 33]])
    built = random_model("tiny-vlm-v2", seed=4, quant="int8", vision_quant="int8")
    assert not any(p.is_meta for p in built.parameters())
    later = quantize_model(random_model("tiny-vlm-v2", seed=4), "int8", vision_mode="int8")
    pixels = torch.zeros(1, 3, built.config.vision.image_size, built.config.vision.image_size)
    with torch.inference_mode():
        assert torch.allclose(built.llm(ids), later.llm(ids), atol=1e-5)
        assert torch.allclose(built.encode_images(pixels), later.encode_images(pixels), atol=1e-5)


def test_quantised_model_chats(tiny_model, scene_image):
    import copy

    from mobilevlm_agent.chat import ChatSession
    from mobilevlm_agent.generate import SamplingParams

    model = quantize_model(copy.deepcopy(tiny_model), "int4", group_size=32, vision_mode="int8")
    answer = ChatSession(model).ask("What is in the image?", image=scene_image, params=SamplingParams(max_new_tokens=6))
    assert answer.token_ids and answer.visual_tokens == model.config.num_visual_tokens


def test_vision_bf16_and_int8_keep_the_demo_models_visual_tokens():
    from mobilevlm_agent.model.vlm import MobileVLM
    from mobilevlm_agent.preprocess import preprocess
    from mobilevlm_agent.sim.world import SimEnv

    model = MobileVLM.from_pretrained("demo", dtype=torch.float32, device="cpu")
    env = SimEnv()
    try:
        pixels = torch.cat([preprocess(env.reset(seed=s).image, model.config.vision.image_size, pad_to_square=True) for s in (501, 502)])
    finally:
        env.close()
    scores = vision_quality(model, pixels, ["bf16", "int8"])
    assert min(scores.values()) >= 0.99, scores


def test_bad_quantisation_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown quantisation 'int3'"):
        quantize_model(random_model("tiny-vlm-v2"), "int3")
    with pytest.raises(ConfigError, match="group size must be"):
        quantize_model(random_model("tiny-vlm-v2"), "int4", group_size=48)
    with pytest.raises(ConfigError, match="vision tower supports"):
        quantize_model(random_model("tiny-vlm-v2"), "none", vision_mode="int4")


@pytest.mark.parametrize("task, measured", [("decode", ("prefill_tok_s", "decode_tok_s")), ("encode", ("encode_ms",)), ("ttft", ("ttft_ms", "ttft_warm_ms", "encode_ms", "prefill_tok_s"))])
def test_bench_json_contract(task, measured, capsys):
    from mobilevlm_agent.cli import main

    assert main(["bench", task, "--config", "tiny-vlm-v2", "--quant", "int4", "--group-size", "32", "--threads", "1",
                 "--prompt-tokens", "12", "--new-tokens", "4", "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("prefill_tok_s", "decode_tok_s", "encode_ms", "ttft_ms", "ttft_warm_ms", "peak_rss_mb"):
        assert key in result
    assert all(result[k] > 0 for k in measured) and result["peak_rss_mb"] > 0
    assert all(result[k] is None for k in ("prefill_tok_s", "decode_tok_s", "encode_ms", "ttft_ms", "ttft_warm_ms") if k not in measured)
    if task == "ttft":  # the warm run prefills the question alone
        assert result["ttft_warm_ms"] < result["ttft_ms"]
    assert result["quant"] == "int4" and result["threads"] == 1
