"""Shared fixtures: a tokenizer trained in the test session, and official-layout checkpoint directories."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mobilevlm_agent.model.checkpoint import to_official
from mobilevlm_agent.model.random_init import builtin_corpus, random_model
from mobilevlm_agent.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    extra = ["Who is the author of this book? Answer the question using a single word or phrase.", "héllo wörld ünïcode ✓ 机器人"]
    return train_tokenizer(builtin_corpus() + extra * 4, tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=400)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


def official_config_json(model) -> dict:
    """config.json as the released mtgv repos write it: no vision config, the CLIP tower named by hub id."""
    c, l = model.config, model.config.llm
    hf = {
        "architectures": ["MobileLlamaForCausalLM"], "model_type": "mobilevlm", "hidden_act": "silu",
        "vocab_size": l.vocab_size, "hidden_size": l.hidden_size, "intermediate_size": l.intermediate_size,
        "num_hidden_layers": l.num_hidden_layers, "num_attention_heads": l.num_attention_heads,
        "max_position_embeddings": l.max_position_embeddings, "max_sequence_length": l.max_position_embeddings,
        "rms_norm_eps": l.rms_norm_eps, "rope_theta": l.rope_theta, "rope_scaling": None,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "n_head": 1, "n_query_groups": 1, "n_embd": l.hidden_size,  # stale lit-gpt fields, as in the 3B configs
    }
    if c.vision is not None:
        hf.update(mm_projector_type=c.projector_type, mm_hidden_size=c.vision.hidden_size, mm_vision_select_layer=-2,
                  mm_vision_select_feature="patch", mm_vision_tower="openai/clip-vit-large-patch14-336",
                  vision_tower_type="clip", image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False)
    return hf


def official_state_dict(model, seed: int = 1) -> dict[str, torch.Tensor]:
    """Official key names, plus what real files also carry: the unused last CLIP layer, post-LN, stale buffers."""
    sd = {to_official(k): v.detach().clone() for k, v in model.state_dict().items()}
    cfg = model.config
    if cfg.vision is not None:
        g = torch.Generator().manual_seed(seed)
        prefix = "model.vision_tower.vision_tower.vision_model."
        last = cfg.vision.num_hidden_layers - 1
        for k, v in model.state_dict().items():
            if k.startswith("vision.encoder.layers.0."):
                sd[to_official(k).replace("encoder.layers.0.", f"encoder.layers.{last}.")] = torch.randn(v.shape, generator=g)
        sd[prefix + "post_layernorm.weight"] = torch.ones(cfg.vision.hidden_size)
        sd[prefix + "post_layernorm.bias"] = torch.zeros(cfg.vision.hidden_size)
        sd[prefix + "embeddings.position_ids"] = torch.arange(cfg.vision.num_patches + 1)[None]
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(cfg.llm.head_dim // 2)
    return sd


def write_official_checkpoint(out: Path, model, tokenizer_path: Path, fmt: str = "safetensors", shards: int = 1) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sd = official_state_dict(model)
    (out / "config.json").write_text(json.dumps(official_config_json(model)))
    (out / "tokenizer.model").write_bytes(Path(tokenizer_path).read_bytes())
    ext = "safetensors" if fmt == "safetensors" else "bin"
    keys = sorted(sd)
    if shards == 1:
        name = "model.safetensors" if ext == "safetensors" else "pytorch_model.bin"
        _write(out / name, sd, ext)
        return out
    weight_map = {}
    for i in range(shards):
        name = f"{'model' if ext == 'safetensors' else 'pytorch_model'}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: sd[k] for k in keys[i::shards]}
        _write(out / name, part, ext)
        weight_map.update({k: name for k in part})
    index = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
    (out / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def _write(path: Path, sd: dict, ext: str) -> None:
    if ext == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)


@pytest.fixture(scope="session")
def tiny_model(tokenizer_path):
    model = random_model("tiny-vlm", seed=0)
    model.tokenizer = Tokenizer(tokenizer_path)
    return model


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory, tiny_model, tokenizer_path) -> Path:
    return write_official_checkpoint(tmp_path_factory.mktemp("ckpt") / "MobileVLM-tiny", tiny_model, tokenizer_path)


@pytest.fixture(scope="session")
def scene_image(tmp_path_factory) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)
    cv2.rectangle(img, (10, 10), (60, 70), (0, 0, 255), -1)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), img)
    return path
