"""Parity with transformers (identical random weights, fp32): LlamaForCausalLM logits, CLIP hidden_states[-2]."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mobilevlm_agent.model.checkpoint import check_state_dict, to_internal  # noqa: E402
from mobilevlm_agent.model.config import LlamaConfig, MobileVLMConfig, VisionConfig  # noqa: E402
from mobilevlm_agent.model.vision import CLIPVisionTower  # noqa: E402
from mobilevlm_agent.model.vlm import MobileVLM  # noqa: E402

TOL = 1e-4

LLAMA_CASES = {
    # MobileLLaMA-1.4B shape, shrunk (head_dim 32)
    "mha": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4),
    # head_dim 80 like MobileLLaMA-2.7B
    "head_dim_80": dict(hidden_size=160, intermediate_size=432, num_hidden_layers=2, num_attention_heads=2),
    "gqa": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_logits_match_transformers(case):
    torch.manual_seed(0)
    kw = dict(vocab_size=300, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0, **LLAMA_CASES[case])
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw, tie_word_embeddings=False, attn_implementation="eager")).eval()
    for p in hf.parameters():  # HF's init leaves norms at 1: perturb everything so every weight matters
        p.data.normal_(0, 0.05)
    ours = MobileVLM(MobileVLMConfig(name=case, llm=LlamaConfig(**kw))).eval()
    ours.load_state_dict(check_state_dict(ours, {to_internal(k): v for k, v in hf.state_dict().items()}))
    ids = torch.randint(0, 300, (2, 37))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours.llm(ids)
    diff = (got - expected).abs().max().item()
    print(f"llama parity {case}: max abs diff {diff:.2e}")
    assert diff <= TOL


CLIP_CASES = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2, image_size=112, patch_size=14),
    # ViT-L/14-336 widths and grid (24x24 patches), only 3 layers deep to stay fast
    "vit_l_336_shallow": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=3, num_attention_heads=16, image_size=336, patch_size=14),
}


@pytest.mark.parametrize("case", CLIP_CASES)
def test_clip_hidden_states_minus_2_match_transformers(case):
    torch.manual_seed(0)
    kw = CLIP_CASES[case]
    vc = VisionConfig(**kw)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**kw, hidden_act="quick_gelu", layer_norm_eps=1e-5, attn_implementation="eager")).eval()
    for p in hf.parameters():
        p.data.normal_(0, 0.05)
    used = MobileVLMConfig(name=case, llm=LlamaConfig(hidden_size=64, num_attention_heads=4), vision=vc).vision_layers_used
    assert used == vc.num_hidden_layers - 1
    tower = CLIPVisionTower(vc, num_layers=used).eval()
    sd = {k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()}
    unused = ("post_layernorm", f"encoder.layers.{used}.", "embeddings.position_ids")
    tower.load_state_dict({k: v for k, v in sd.items() if not k.startswith(unused)})
    pixels = torch.randn(2, 3, vc.image_size, vc.image_size)
    with torch.no_grad():
        expected = hf(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = tower(pixels)
    diff = (got - expected).abs().max().item()
    print(f"clip parity {case} hidden_states[-2]: max abs diff {diff:.2e}")
    assert got.shape == (2, vc.num_patches, vc.hidden_size)
    assert diff <= TOL
