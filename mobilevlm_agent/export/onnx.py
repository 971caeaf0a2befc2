"""ONNX export for onnxruntime: the decoder as one graph over a shared-buffer KV cache, the ViT + projector as another.

decoder.onnx is written node by node with onnxruntime's fused CPU operators, the ones onnxruntime-genai uses:
SimplifiedLayerNormalization (RMSNorm), GroupQueryAttention (RoPE + causal attention + KV cache written in place),
MatMulNBits (int4 / int8 weights, int8 activations inside the kernel). q/k/v and gate/up are fused into one matmul
each, so a decode step is five matmuls a layer. The int4 codes come from the same quantiser as the torch backend.

vision.onnx is traced from the torch modules (fixed image size; only the layers the projector reads).

Files in OUT_DIR: decoder.onnx (+ decoder.onnx.data), vision.onnx, embed_tokens.safetensors (looked up, not
multiplied; int8 rows + per-row scales in int exports), onnx_model.json (model config, export settings and the
parts written), tokenizer.model. A vision-only export (`parts: [vision]`) holds vision.onnx and the manifest.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.model.quant import quantize_int4, quantize_int8
from mobilevlm_agent.model.vlm import MobileVLM

ONNX_QUANT_MODES = ("none", "int8", "int4")
MANIFEST = "onnx_model.json"
OPSET = 17
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGN = 4096


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ConfigError("ONNX export needs the onnx package: pip install 'mobilevlm_agent[onnx]'") from e
    return onnx


def check_onnx_quant(quant: str, group_size: int) -> None:
    if quant not in ONNX_QUANT_MODES:
        raise ConfigError(f"ONNX export supports --quant {', '.join(ONNX_QUANT_MODES)}, got {quant!r}")
    if group_size not in (16, 32, 64, 128, 256):
        raise ConfigError(f"ONNX block size must be 16, 32, 64, 128 or 256, got {group_size}")


class GraphBuilder:
    """Nodes, initializers and unique names for one ONNX graph.

    With `data_file`, every initializer of 1 KiB or more is written there as it is made (ONNX external data), so an
    export holds the model plus one tensor, not the model plus two serialised copies (21 GB for a 1.7B fp32 decoder).
    """

    def __init__(self, data_file: Path | None = None) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self.data_file = data_file
        self._data = open(data_file, "wb") if data_file is not None else None

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import TensorProto, helper, numpy_helper

        array = np.ascontiguousarray(array)
        if self._data is None or array.nbytes < EXTERNAL_MIN_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        end = self._data.tell()
        offset = end + -end % EXTERNAL_ALIGN  # page-aligned, so onnxruntime can map it
        self._data.seek(offset)
        self._data.write(memoryview(array).cast("B"))
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.data_file.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        return name

    def close(self) -> None:
        if self._data is not None:
            self._data.close()

    def node(self, op: str, inputs: list[str], outputs: list[str] | str, domain: str = "", **attrs) -> list[str]:
        from onnx import helper

        outputs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", domain=domain, **attrs))
        return outputs

    def linear(self, x: str, weight: torch.Tensor, name: str, quant: str, group_size: int) -> str:
        """x [.., K] @ weight[N, K].T. int4/int8: MatMulNBits blocks of `group_size` (accuracy level 4: int8 compute)."""
        n, k = weight.shape
        if quant == "none" or k % group_size:
            w = self.constant(f"{name}.weight", weight.detach().float().T.numpy())
            return self.node("MatMul", [x, w], f"{name}.out")[0]
        blocks = k // group_size
        if quant == "int4":
            q, scale, zero = quantize_int4(weight.detach(), group_size)
            codes = q.numpy().astype(np.uint8).reshape(n, blocks, group_size)
            packed = codes[..., 0::2] | (codes[..., 1::2] << 4)  # two codes a byte, low nibble first
            zeros = zero.numpy().astype(np.uint8)
            if blocks % 2:
                zeros = np.pad(zeros, ((0, 0), (0, 1)))
            inputs = [self.constant(f"{name}.qweight", packed), self.constant(f"{name}.scales", scale.numpy().reshape(-1)),
                      self.constant(f"{name}.zeros", (zeros[:, 0::2] | (zeros[:, 1::2] << 4)).reshape(-1))]
        else:  # int8: symmetric per block, stored offset by 128 (the kernel's default zero point)
            q, scale = quantize_int8(weight.detach().float().reshape(-1, group_size))
            codes = (q.numpy().astype(np.int16) + 128).astype(np.uint8).reshape(n, blocks, group_size)
            inputs = [self.constant(f"{name}.qweight", codes), self.constant(f"{name}.scales", scale.numpy())]
        bits = 4 if quant == "int4" else 8
        return self.node("MatMulNBits", [x, *inputs], f"{name}.out", domain="com.microsoft",
                         K=k, N=n, bits=bits, block_size=group_size, accuracy_level=4)[0]

    def rms_norm(self, x: str, weight: torch.Tensor, name: str, eps: float) -> str:
        w = self.constant(f"{name}.weight", weight.detach().float().numpy())
        return self.node("SimplifiedLayerNormalization", [x, w], f"{name}.out", axis=-1, epsilon=eps)[0]


def decoder_graph(model: MobileVLM, quant: str, group_size: int, data_file: Path | None = None):
    """inputs_embeds [1, S, H] + past KV (shared with present) -> next-token logits [1, 1, V] + present KV.

    seqlens_k [1] int32 = positions filled after this call - 1; total_sequence_length (int32 scalar) = the same + 1.
    Positions [past, past + S) are computed from them, so a cached prefix is continued, not recomputed.
    lm_head is int8 under int4, as on the torch backend. With `data_file`, the weights are streamed there.
    """
    from onnx import TensorProto, helper

    llm, cfg = model.llm, model.llm.config
    g = GraphBuilder(data_file)
    d, kv_heads = cfg.head_dim, cfg.num_key_value_heads
    # GroupQueryAttention takes the first half of the torch path's rotate-half tables: the same frequencies
    cos, sin = llm.rope(0, cfg.max_position_embeddings, torch.empty(0))
    g.constant("cos_cache", cos[:, : d // 2].numpy())
    g.constant("sin_cache", sin[:, : d // 2].numpy())
    inputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [1, "sequence", cfg.hidden_size]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, cfg.vocab_size])]
    x = "inputs_embeds"
    for i, layer in enumerate(llm.layers):
        a, p = layer.self_attn, f"layers.{i}"
        h = g.rms_norm(x, layer.input_layernorm.weight, f"{p}.input_layernorm", cfg.rms_norm_eps)
        qkv_weight = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        qkv = g.linear(h, qkv_weight, f"{p}.qkv_proj", quant, group_size)
        cache = [f"past.{i}.key", f"past.{i}.value"]
        present = [f"present.{i}.key", f"present.{i}.value"]
        for name in cache:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, kv_heads, "capacity", d]))
        for name in present:
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, kv_heads, "capacity", d]))
        attn = g.node("GroupQueryAttention", [qkv, "", "", *cache, "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache"],
                      [f"{p}.attn", *present], domain="com.microsoft",
                      num_heads=cfg.num_attention_heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0)[0]
        x = g.node("Add", [x, g.linear(attn, a.o_proj.weight, f"{p}.o_proj", quant, group_size)], f"{p}.attn_residual")[0]
        h = g.rms_norm(x, layer.post_attention_layernorm.weight, f"{p}.post_attention_layernorm", cfg.rms_norm_eps)
        m = layer.mlp
        gate_up = g.linear(h, torch.cat([m.gate_proj.weight, m.up_proj.weight]), f"{p}.gate_up_proj", quant, group_size)
        gate, up = g.node("Split", [gate_up], [f"{p}.gate", f"{p}.up"], axis=-1, num_outputs=2)
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{p}.gate_sigmoid")[0]], f"{p}.silu")[0]
        act = g.node("Mul", [silu, up], f"{p}.act")[0]
        x = g.node("Add", [x, g.linear(act, m.down_proj.weight, f"{p}.down_proj", quant, group_size)], f"{p}.mlp_residual")[0]
    last = g.node("Slice", [x, g.constant("last_start", np.array([-1], np.int64)), g.constant("last_end", np.array([2**62], np.int64)),
                            g.constant("seq_axis", np.array([1], np.int64))], "last_hidden")[0]
    h = g.rms_norm(last, llm.norm.weight, "norm", cfg.rms_norm_eps)
    logits = g.linear(h, llm.lm_head.weight, "lm_head", "int8" if quant == "int4" else quant, group_size)
    g.node("Identity", [logits], "logits")
    g.close()
    graph = helper.make_graph(g.nodes, "mobilellama_decoder", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET + 1), helper.make_opsetid("com.microsoft", 1)],
                             producer_name="mobilevlm_agent")


class _VisionGraph(torch.nn.Module):
    def __init__(self, model: MobileVLM) -> None:
        super().__init__()
        self.vision, self.projector = model.vision, model.projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision(pixel_values))


def export_vision(model: MobileVLM, path: Path, quant: str) -> Path:
    """pixel_values [1, 3, S, S] (preprocessed) -> visual tokens [1, N, H]; int8 = dynamic int8 matmuls."""
    size = model.config.vision.image_size
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is deprecated; it handles this graph
        warnings.simplefilter("ignore")
        torch.onnx.export(_VisionGraph(model).eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                          input_names=["pixel_values"], output_names=["visual_tokens"], opset_version=OPSET)
    if quant == "int8":
        tmp = path.with_suffix(".fp32.onnx")
        path.replace(tmp)
        quantize_matmuls_int8(tmp, path)
        tmp.unlink()
    return path


def quantize_matmuls_int8(source: Path, out: Path) -> None:
    """Dynamic int8 for every MatMul/Gemm with a constant weight (per output channel): the vision graph's kernels."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])


def export_decoder(model: MobileVLM, out: Path, quant: str, group_size: int) -> list[Path]:
    """decoder.onnx (+ .data) and the embedding table it is fed from."""
    from safetensors.numpy import save_file

    (out / "decoder.onnx").unlink(missing_ok=True)
    with torch.no_grad():
        decoder = decoder_graph(model, quant, group_size, out / "decoder.onnx.data")
    _onnx().save_model(decoder, out / "decoder.onnx")
    del decoder
    table = model.llm.embed_tokens.weight.detach().float()
    if quant in ("int8", "int4"):  # int8 rows, as the torch backend's Int8Embedding
        q, scale = quantize_int8(table)
        save_file({"embed_tokens": q.numpy(), "embed_scale": scale.numpy()}, out / "embed_tokens.safetensors")
    else:
        save_file({"embed_tokens": table.numpy()}, out / "embed_tokens.safetensors")
    return [out / "decoder.onnx", out / "decoder.onnx.data", out / "embed_tokens.safetensors"]


def export_model(model: MobileVLM, out_dir: str | Path, quant: str = "int4", group_size: int = 32, vision_quant: str = "none",
                 decoder: bool = True) -> list[Path]:
    """Write every file the onnxruntime backend loads (see the module docstring). The model is moved to fp32 on CPU
    in place. `decoder=False` writes the vision graph alone (what `bench encode` needs: no 1.7B decoder export)."""
    _onnx()  # a clear error before any work
    check_onnx_quant(quant, group_size)
    if vision_quant not in ("none", "int8"):
        raise ConfigError(f"ONNX vision export supports none or int8, got {vision_quant!r}")
    if not decoder and model.vision is None:
        raise ConfigError(f"{model.config.name} is text-only: a vision-only export would be empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for part in (model,) if decoder else (model.vision, model.projector):  # a vision-only model's decoder may be on meta
        part.float().cpu().eval()
    paths = export_decoder(model, out, quant, group_size) if decoder else []
    if model.vision is not None:
        paths.append(export_vision(model, out / "vision.onnx", vision_quant))
    manifest = {"format": "mobilevlm_agent-onnx", "version": 1, "config": model.config.to_dict(),
                "parts": ["decoder"] * decoder + ["vision"] * (model.vision is not None),
                "quant": quant, "group_size": group_size, "vision_quant": vision_quant if model.vision is not None else None}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    paths.append(out / MANIFEST)
    if model.tokenizer is not None:
        shutil.copyfile(model.tokenizer.path, out / "tokenizer.model")
        paths.append(out / "tokenizer.model")
    return paths


def export_onnx(model_dir: str, out_dir: str, quant: str = "int4", group_size: int = 32, vision_quant: str = "none",
                decoder: bool = True) -> list[Path]:
    """`mobilevlm-agent export onnx`: a checkpoint directory (or a bundled name) -> an onnxruntime model directory."""
    from mobilevlm_agent.model.checkpoint import resolve_model_dir

    check_onnx_quant(quant, group_size)
    model = MobileVLM.from_pretrained(resolve_model_dir(model_dir), dtype=torch.float32, device="cpu")
    return export_model(model, out_dir, quant, group_size, vision_quant, decoder)
