"""GGUF export: llama.cpp's names and metadata, and a NumPy forward pass over the exported tensors in llama.cpp's
conventions (interleaved RoPE pairs) that reproduces our logits, which proves the q/k permutation."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import write_official_checkpoint  # noqa: E402

from mobilevlm_agent.errors import ConfigError  # noqa: E402
from mobilevlm_agent.export.gguf import LLAMA_CPP_LDP_GRID, export_gguf  # noqa: E402
from mobilevlm_agent.model.vlm import MobileVLM  # noqa: E402

LLAMA_CPP_SIZE = LLAMA_CPP_LDP_GRID * 14  # the only tower size llama.cpp's LDP graphs take


def at_size(model, image_size):
    model.resize_images(image_size)
    return model


@pytest.fixture(scope="module")
def tiny_vlm_v2_dir(tmp_path_factory, tokenizer_path):
    from mobilevlm_agent.model.random_init import random_model
    from mobilevlm_agent.tokenizer import Tokenizer

    model = at_size(random_model("tiny-vlm-v2", seed=3), LLAMA_CPP_SIZE)
    with torch.no_grad():  # sharp attention, so a wrong RoPE layout changes the logits (at init scale it would not)
        for layer in model.llm.layers:
            layer.self_attn.q_proj.weight.mul_(30)
            layer.self_attn.k_proj.weight.mul_(30)
    model.tokenizer = Tokenizer(tokenizer_path)
    out = tmp_path_factory.mktemp("v2") / "tiny-vlm-v2"
    model.save_pretrained(out)
    return out


def read(path):
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return tensors, fields


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def llama_cpp_style_logits(t, f, ids):
    """Last-position logits with llama.cpp's LLaMA graph: RoPE rotates adjacent pairs (x0, x1), (x2, x3), ..."""
    n_head, n_kv = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    eps, theta = f["llama.attention.layer_norm_rms_epsilon"], f["llama.rope.freq_base"]
    x = t["token_embd.weight"][ids].astype(np.float64)
    seq, dim = x.shape
    hd = dim // n_head
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(seq)[:, None] * inv[None]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(v):  # v [seq, heads, hd]
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = a * cos[:, None] - b * sin[:, None]
        out[..., 1::2] = a * sin[:, None] + b * cos[:, None]
        return out

    for i in range(f["llama.block_count"]):
        h = rms(x, t[f"blk.{i}.attn_norm.weight"], eps)
        q = rope((h @ t[f"blk.{i}.attn_q.weight"].T).reshape(seq, n_head, hd))
        k = rope((h @ t[f"blk.{i}.attn_k.weight"].T).reshape(seq, n_kv, hd)).repeat(n_head // n_kv, axis=1)
        v = (h @ t[f"blk.{i}.attn_v.weight"].T).reshape(seq, n_kv, hd).repeat(n_head // n_kv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + np.triu(np.full((seq, seq), -np.inf), 1)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", p, v).reshape(seq, dim) @ t[f"blk.{i}.attn_output.weight"].T
        h = rms(x, t[f"blk.{i}.ffn_norm.weight"], eps)
        gate = h @ t[f"blk.{i}.ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ t[f"blk.{i}.ffn_up.weight"].T)) @ t[f"blk.{i}.ffn_down.weight"].T
    return rms(x, t["output_norm.weight"], eps)[-1] @ t["output.weight"].T


@pytest.mark.parametrize("quant, min_cosine", [("f16", 0.9999), ("q8_0", 0.999)])
def test_llm_gguf_reproduces_our_logits(tiny_vlm_v2_dir, tmp_path, quant, min_cosine):
    paths = export_gguf(str(tiny_vlm_v2_dir), str(tmp_path), quant)
    assert [p.name for p in paths] == [f"model-{quant}.gguf", "mmproj-f16.gguf"]
    tensors, fields = read(paths[0])
    model = MobileVLM.from_pretrained(tiny_vlm_v2_dir, dtype=torch.float32, device="cpu")
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == model.config.llm.num_hidden_layers
    assert len(fields["tokenizer.ggml.tokens"]) == model.config.llm.vocab_size
    ids = model.tokenizer.encode("USER: Is there a red cube in the image? ASSISTANT:")
    with torch.inference_mode():
        ours = model.llm(torch.tensor([ids]))[0, -1].double().numpy()
    theirs = llama_cpp_style_logits(tensors, fields, ids)
    cosine = ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)
    assert cosine > min_cosine, cosine


def test_q4_0_gguf_holds_the_same_weights(tiny_vlm_v2_dir, tmp_path):
    """q4_0 against f16, tensor by tensor (4-bit logits under this test model's 30x sharpened attention depend on the
    seed; the weights themselves must sit within Q4_0's rounding error, and output.weight is kept at q8_0)."""
    q4, _ = read(export_gguf(str(tiny_vlm_v2_dir), str(tmp_path / "q4"), "q4_0")[0])
    f16, _ = read(export_gguf(str(tiny_vlm_v2_dir), str(tmp_path / "f16"), "f16")[0])
    assert q4.keys() == f16.keys()
    for name, ref in f16.items():
        error = np.linalg.norm(q4[name] - ref) / np.linalg.norm(ref)
        assert error < (0.01 if name == "output.weight" or ref.ndim == 1 else 0.15), (name, error)
    assert any(np.linalg.norm(q4[n] - f16[n]) / np.linalg.norm(f16[n]) > 0.02 for n in f16 if n.startswith("blk."))  # really 4-bit


def test_mmproj_gguf_names_and_metadata(tiny_vlm_v2_dir, tmp_path):
    path = export_gguf(str(tiny_vlm_v2_dir), str(tmp_path), "f16")[1]
    tensors, fields = read(path)
    model = MobileVLM.from_pretrained(tiny_vlm_v2_dir, dtype=torch.float32, device="cpu")
    used = len(model.vision.encoder.layers)
    assert fields["clip.projector_type"] == "ldpv2" and fields["clip.has_llava_projector"]
    assert fields["clip.vision.block_count"] == used + 1 and list(fields["clip.vision.feature_layer"]) == [used]
    for name in ("v.class_embd", "v.patch_embd.weight", "v.position_embd.weight", "v.pre_ln.weight", f"v.blk.{used - 1}.ffn_down.weight",
                 "mm.model.mlp.0.weight", "mm.model.mlp.2.bias", "mm.model.peg.0.weight", "mm.model.peg.0.bias"):
        assert name in tensors, name
    assert not np.any(tensors[f"v.blk.{used}.attn_q.weight"])  # the stand-in for the skipped last layer is zero
    fc1 = model.vision.encoder.layers[0].mlp.fc1.weight.detach().numpy()
    np.testing.assert_allclose(tensors["v.blk.0.ffn_down.weight"], fc1, atol=1e-3)  # llama.cpp calls fc1 ffn_down


def test_mmproj_gguf_for_ldp_v1(tiny_model, tokenizer_path, tmp_path):
    ckpt = write_official_checkpoint(tmp_path / "MobileVLM-tiny", at_size(copy.deepcopy(tiny_model), LLAMA_CPP_SIZE), tokenizer_path)
    tensors, fields = read(export_gguf(str(ckpt), str(tmp_path / "out"), "f16")[1])
    assert fields["clip.projector_type"] == "ldp"
    for name in ("mm.model.mlp.1.weight", "mm.model.mlp.3.bias", "mm.model.mb_block.1.block.0.0.weight", "mm.model.mb_block.1.block.1.fc1.weight",
                 "mm.model.mb_block.2.block.2.0.weight", "mm.model.mb_block.2.block.2.1.bias"):
        assert name in tensors, name


def test_a_tower_llama_cpp_cannot_run_is_refused_before_anything_is_written(tokenizer_path, tmp_path):
    """llama.cpp's LDP/LDPv2 graph is fixed at 24 x 24 patches: a 112 px tower's mmproj would abort it on load."""
    from mobilevlm_agent.model.random_init import random_model
    from mobilevlm_agent.tokenizer import Tokenizer

    model = random_model("tiny-vlm-v2", seed=3)
    model.tokenizer = Tokenizer(tokenizer_path)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"112 px \(8 x 8 patches\).*24 x 24.*--llm-only"):
        export_gguf(str(tmp_path / "m"), str(tmp_path / "out"), "f16")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in export_gguf(str(tmp_path / "m"), str(tmp_path / "out"), "f16", llm_only=True)] == ["model-f16.gguf"]
