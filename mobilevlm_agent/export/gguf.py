"""GGUF export for llama.cpp: the MobileLLaMA decoder (`model-Q.gguf`) and the ViT + LDP/LDPv2 projector (`mmproj-f16.gguf`).

Names and metadata follow llama.cpp's own converters (convert_hf_to_gguf.py for the LLM, convert_image_encoder_to_gguf.py
with --projector-type ldp|ldpv2 for the mmproj), so `llama-mtmd-cli -m model-q4_0.gguf --mmproj mmproj-f16.gguf` runs
MobileVLM V1 and V2.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from mobilevlm_agent.errors import ConfigError, InputError
from mobilevlm_agent.model.checkpoint import to_official
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.preprocess import CLIP_MEAN, CLIP_STD

GGUF_QUANTS = ("q4_0", "q8_0", "f16")
LLM_TENSOR_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
PROJECTOR_TYPES = {"ldpnet": "ldp", "ldpnetv2": "ldpv2"}
# llama.cpp's LDP and LDPv2 graphs (clip.cpp) reshape the tower's output to a fixed 24 x 24 patch grid, MobileVLM's
# 336 px / 14: an mmproj for any other grid aborts llama.cpp when it loads.
LLAMA_CPP_LDP_GRID = 24


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF export needs the `gguf` package: pip install 'mobilevlm_agent[export]'") from None
    return gguf


def rope_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs (the permutation llama.cpp's converter applies)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def llm_tensors(model: MobileVLM) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, fp32 tensor) for the decoder, q/k permuted for llama.cpp's RoPE layout."""
    cfg = model.config.llm
    out = [("token_embd.weight", model.llm.embed_tokens.weight)]
    for i, layer in enumerate(model.llm.layers):
        for name, tensor in layer.state_dict().items():
            module = name.rsplit(".", 1)[0]
            w = tensor
            if module == "self_attn.q_proj":
                w = rope_to_interleaved(w, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                w = rope_to_interleaved(w, cfg.num_key_value_heads)
            out.append((f"blk.{i}.{LLM_TENSOR_NAMES[module]}.weight", w))
    out += [("output_norm.weight", model.llm.norm.weight), ("output.weight", model.llm.lm_head.weight)]
    return [(n, t.detach().float()) for n, t in out]


def pick_type(gguf, name: str, tensor: torch.Tensor, quant: str):
    """The GGUF type of one tensor: norms stay f32; a row that does not split into 32-wide blocks falls back to f16;
    with q4_0 the output layer is q8_0 (the logits are the most sensitive layer, as llama.cpp also keeps it wider)."""
    t = gguf.GGMLQuantizationType
    if tensor.ndim == 1:
        return t.F32
    wanted = {"q4_0": t.Q4_0, "q8_0": t.Q8_0, "f16": t.F16}[quant]
    if wanted == t.Q4_0 and name == "output.weight":
        wanted = t.Q8_0
    if wanted != t.F16 and tensor.shape[-1] % 32:
        return t.F16
    return wanted


def add_tensor(writer, gguf, name: str, tensor: torch.Tensor, qtype) -> None:
    data = tensor.numpy().astype(np.float32)
    t = gguf.GGMLQuantizationType
    if qtype == t.F32:
        writer.add_tensor(name, data)
    elif qtype == t.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_shape=gguf.quants.quant_shape_to_byte_shape(data.shape, qtype), raw_dtype=qtype)


def add_tokenizer(writer, model: MobileVLM) -> None:
    if model.tokenizer is None:
        raise InputError("the checkpoint has no tokenizer.model; llama.cpp needs the vocabulary inside the GGUF")
    sp = model.tokenizer.sp
    pieces, scores, types = [], [], []
    for i in range(sp.GetPieceSize()):
        pieces.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        # SentencePiece token types as llama.cpp numbers them: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte
        types.append(2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 5 if sp.IsUnused(i) else 6 if sp.IsByte(i) else 1)
    vocab = model.config.llm.vocab_size
    for i in range(len(pieces), vocab):  # checkpoints may pad the embedding table past the tokenizer
        pieces.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(4)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(max(sp.unk_id(), 0))
    writer.add_pad_token_id(max(sp.unk_id(), 0))  # MobileVLM pads with <unk>
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def export_llm(model: MobileVLM, out: Path, quant: str = "q4_0") -> Path:
    gguf = _gguf()
    if quant not in GGUF_QUANTS:
        raise ConfigError(f"unknown GGUF quantisation {quant!r}; choose one of {', '.join(GGUF_QUANTS)}")
    cfg = model.config.llm
    path = out / f"model-{quant}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(model.config.name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type({"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f16": gguf.LlamaFileType.MOSTLY_F16}[quant])
    add_tokenizer(writer, model)
    for name, tensor in llm_tensors(model):
        add_tensor(writer, gguf, name, tensor, pick_type(gguf, name, tensor, quant))
    _finish(writer)
    return path


def clip_tensor_name(internal: str) -> str:
    """Our key -> llama.cpp's mmproj name (the same renaming as convert_image_encoder_to_gguf.py)."""
    official = to_official(internal)
    if official.startswith("model.mm_projector."):
        name = "mm." + official[len("model.mm_projector.") :]
        return re.sub(r"^mm\.peg\.peg\.", "mm.model.peg.", re.sub(r"^mm\.mlp\.mlp\.", "mm.model.mlp.", name))
    name = official[len("model.vision_tower.vision_tower.") :]
    for old, new in (("vision_model", "v"), ("encoder.layers", "blk"), ("embeddings.", ""), ("_proj", ""), ("self_attn.", "attn_"),
                     ("layer_norm", "ln"), ("layernorm", "ln"), ("mlp.fc1", "ffn_down"), ("mlp.fc2", "ffn_up"), ("embedding", "embd"),
                     ("layrnorm", "ln")):
        name = name.replace(old, new)
    return name


def check_mmproj_exportable(model: MobileVLM) -> None:
    cfg = model.config
    if cfg.vision is None or model.vision is None:
        raise InputError(f"{cfg.name} is a text-only model: there is no vision tower to export")
    if cfg.projector_type not in PROJECTOR_TYPES:
        raise ConfigError(f"mmproj export supports LDP and LDPv2 projectors, not {cfg.projector_type!r}")
    grid = cfg.vision.image_size // cfg.vision.patch_size
    if grid != LLAMA_CPP_LDP_GRID:
        raise ConfigError(f"{cfg.name}'s tower takes {cfg.vision.image_size} px ({grid} x {grid} patches), but llama.cpp's "
                          f"LDP/LDPv2 graph is fixed at {LLAMA_CPP_LDP_GRID} x {LLAMA_CPP_LDP_GRID} "
                          f"({LLAMA_CPP_LDP_GRID * cfg.vision.patch_size} px) and aborts on any other mmproj; "
                          "export the LLM alone (--llm-only) or use `export onnx`")


def export_mmproj(model: MobileVLM, out: Path) -> Path:
    """The vision tower + projector as llama.cpp's CLIP GGUF (f16 matrices, f32 vectors; convolutions always f16)."""
    gguf = _gguf()
    cfg = model.config
    check_mmproj_exportable(model)
    v = cfg.vision
    path = out / "mmproj-f16.gguf"
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_file_type(1)
    writer.add_name(f"{cfg.name} vision tower + {cfg.projector_type}")
    writer.add_description("image encoder for LLaVA")
    writer.add_string("clip.projector_type", PROJECTOR_TYPES[cfg.projector_type])
    used = len(model.vision.encoder.layers)
    writer.add_uint32("clip.vision.image_size", v.image_size)
    writer.add_uint32("clip.vision.patch_size", v.patch_size)
    writer.add_uint32("clip.vision.embedding_length", v.hidden_size)
    writer.add_uint32("clip.vision.feed_forward_length", v.intermediate_size)
    writer.add_uint32("clip.vision.projection_dim", cfg.llm.hidden_size)
    writer.add_uint32("clip.vision.attention.head_count", v.num_attention_heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", v.layer_norm_eps)
    # llama.cpp loads block_count blocks and runs all but the last for LLaVA-style projectors; we never hold layers past
    # the selected one, so one zero block stands in for the skipped last layer (it is never run).
    writer.add_uint32("clip.vision.block_count", used + 1)
    writer.add_array("clip.vision.feature_layer", [used])
    writer.add_array("clip.vision.image_mean", list(CLIP_MEAN))
    writer.add_array("clip.vision.image_std", list(CLIP_STD))
    writer.add_bool("clip.use_gelu", False)  # CLIP ViT-L uses quick_gelu
    t = gguf.GGMLQuantizationType
    state = {f"projector.{k}": w for k, w in model.projector.state_dict().items()}
    state.update({f"vision.{k}": w for k, w in model.vision.state_dict().items()})
    state.update({f"vision.encoder.layers.{used}.{k}": torch.zeros_like(w) for k, w in model.vision.encoder.layers[0].state_dict().items()})
    for key, tensor in state.items():
        data = tensor.detach().float().squeeze()
        name = clip_tensor_name(key)
        add_tensor(writer, gguf, name, data, t.F16 if data.ndim in (2, 4) or tensor.ndim == 4 else t.F32)
    _finish(writer)
    return path


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def export_gguf(model_dir: str, out_dir: str, quant: str = "q4_0", llm_only: bool = False) -> list[Path]:
    """Both files for a VLM checkpoint, the LLM file alone for a text-only one or with llm_only. A tower llama.cpp
    cannot run is refused before anything is written."""
    from mobilevlm_agent.model.checkpoint import resolve_model_dir

    model = MobileVLM.from_pretrained(resolve_model_dir(model_dir), dtype=torch.float32, device="cpu")
    with_mmproj = model.vision is not None and not llm_only
    if with_mmproj:
        check_mmproj_exportable(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [export_llm(model, out, quant)]
    if with_mmproj:
        paths.append(export_mmproj(model, out))
    return paths
