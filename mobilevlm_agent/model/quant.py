"""Weight-only quantisation of linear layers for on-board inference.

int8: one scale per output channel (symmetric). int4: groups of `group_size` input weights share a scale and a zero
point (asymmetric, w = (q - zero) * scale, integer zero points). Activations stay in floating point; each mode runs on the fastest
kernel torch has for it on this device, measured in bench/compare.py:
  int8 on CPU -> fbgemm's dynamic int8 GEMM (activations quantised per call); elsewhere torch's int8 weight-only mm.
  int4 on CPU -> torch's int4 weight-only mm (bf16 activations); elsewhere the weights are dequantised per call.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.model.memory import limit_heap_retention, release_freed_memory

QUANT_MODES = ("none", "bf16", "fp16", "int8", "int4")
VISION_QUANT_MODES = ("none", "bf16", "fp16", "int8")  # int4 costs the ViT too much feature accuracy
FLOAT_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_mode(mode: str, group_size: int = 64) -> None:
    if mode not in QUANT_MODES:
        raise ConfigError(f"unknown quantisation {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    if mode == "int4" and group_size not in (32, 64, 128, 256):
        raise ConfigError(f"int4 group size must be 32, 64, 128 or 256, got {group_size}")


ROW_BLOCK = 1024  # quantise this many output rows at a time: temporaries stay small even for a 32000-row lm_head


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> int8 [N, K] and fp32 scales [N] with weight ≈ q * scale."""
    n, k = weight.shape
    q = torch.empty(n, k, dtype=torch.int8, device=weight.device)
    scale = torch.empty(n, dtype=torch.float32, device=weight.device)
    for r in range(0, n, ROW_BLOCK):
        w = weight[r : r + ROW_BLOCK].float()
        scale[r : r + ROW_BLOCK] = s = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
        q[r : r + ROW_BLOCK] = torch.round(w / s[:, None]).clamp(-127, 127)
    return q, scale


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, K] float -> codes 0..15 (int32 [N, K]), scales (fp32) and zero points (int32 0..15) per group [N, K / group];
    w ≈ (q - zero) * scale. Integer zero points are what onnxruntime's fused int4 kernel takes, so both backends
    share one quantiser."""
    n, k = weight.shape
    if k % group_size:
        raise ConfigError(f"int4 needs the input size ({k}) to be a multiple of the group size ({group_size})")
    q = torch.empty(n, k, dtype=torch.int32, device=weight.device)
    scale = torch.empty(n, k // group_size, dtype=torch.float32, device=weight.device)
    zero = torch.empty(n, k // group_size, dtype=torch.int32, device=weight.device)
    for r in range(0, n, ROW_BLOCK):
        w = weight[r : r + ROW_BLOCK].float().view(-1, k // group_size, group_size)
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)  # the range holds 0, so the zero point is a code
        s = ((hi - lo) / 15).clamp(min=1e-10)
        z = torch.round(-lo / s).clamp(0, 15)
        scale[r : r + ROW_BLOCK], zero[r : r + ROW_BLOCK] = s, z.int()
        q[r : r + ROW_BLOCK] = (torch.round(w / s[..., None]) + z[..., None]).clamp(0, 15).view(-1, k)
    return q, scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    groups = scale.shape[1]
    return ((q.view(n, groups, k // groups) - zero[..., None]).float() * scale[..., None]).view(n, k)


def _fbgemm_ready() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_int8(weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self._packed = None  # fbgemm's own copy of the int8 weights, opaque to state_dict
        if q.device.type == "cpu" and _fbgemm_ready():
            with warnings.catch_warnings():  # the quantised-tensor constructors warn that they are deprecated
                warnings.simplefilter("ignore")
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
                self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)
            q = None  # not kept twice
        self.register_buffer("weight_int8", q)
        self.packed_bytes = weight.numel() if q is None else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self._packed is not None and x.device.type == "cpu":
            y = torch.ops.quantized.linear_dynamic(flat.float(), self._packed, True).to(x.dtype)
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scale.to(x.dtype))
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel"


class Int8Embedding(nn.Module):
    """The token embedding table as int8 rows, one scale each: a quarter of fp32 (196 MB saved at MobileLLaMA's
    32000 x 2048). A lookup dequantises only the rows it reads, so it costs nothing per token."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.out_dtype = weight.dtype
        q, scale = quantize_int8(weight)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (F.embedding(ids, self.weight_int8).float() * self.scale[ids].unsqueeze(-1)).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


class Int4Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, group_size: int = 64, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = group_size
        q, scale, zero = quantize_int4(weight, group_size)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        packed = None
        if weight.device.type == "cpu":
            try:  # [N, K/2] uint8, laid out for torch's CPU kernel
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            except RuntimeError:
                packed = None
        self.register_buffer("packed", packed)
        if self.packed is not None:
            # the kernel computes (q - 8) * scale + offset, so its offset is the value at code 8
            self.register_buffer("scale_zero", torch.stack([scale, (8 - zero) * scale], -1).transpose(0, 1).contiguous().to(torch.bfloat16))
        else:
            self.register_buffer("codes", (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8))  # two codes a byte
            self.register_buffer("scale", scale)
            self.register_buffer("zero", zero.to(torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.packed is not None:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.to(torch.bfloat16), self.packed, self.group_size, self.scale_zero).to(x.dtype)
        else:
            q = torch.stack([self.codes & 15, self.codes >> 4], -1).view(self.out_features, self.in_features).int()
            y = F.linear(flat, dequantize_int4(q, self.scale, self.zero.int()).to(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 group {self.group_size}"


def quantize_linears(module: nn.Module, mode: str, group_size: int = 64) -> nn.Module:
    """Replace every nn.Linear under `module` (in place) by its int8/int4 version. An int4 layer whose input size is
    not a multiple of `group_size` is stored as int8 instead. Returns the module."""
    for child in list(module.modules()):
        for attr, layer in list(child.named_children()):
            if not isinstance(layer, nn.Linear):
                continue
            with torch.no_grad():
                use_int4 = mode == "int4" and layer.in_features % group_size == 0
                new = Int4Linear(layer.weight, group_size, layer.bias) if use_int4 else Int8Linear(layer.weight, layer.bias)
            setattr(child, attr, new)
    return module


def weight_bytes(module) -> int:
    """Bytes held by parameters and buffers (quantised weights included; KV caches excluded). An onnxruntime piece
    (model/ort.py) reports its own `weight_bytes`."""
    if not isinstance(module, nn.Module):
        return module.weight_bytes
    tensors = list(module.parameters()) + [b for name, b in module.named_buffers() if b is not None and "kv_cache" not in name]
    packed = sum(getattr(m, "packed_bytes", 0) for m in module.modules())
    return sum(t.numel() * t.element_size() for t in tensors) + packed


Part = tuple[nn.Module, str, str, str]  # (parent, attribute, side: llm | vision, kind: linears | head | embedding | keep)


def vision_parts(owner: nn.Module) -> list[Part]:
    """The ViT and projector of `owner` (anything with .vision and .projector) as pieces; see model_parts."""
    vision = owner.vision
    parts = [(vision, "embeddings", "vision", "keep"), (vision, "pre_layrnorm", "vision", "keep")]
    parts += [(vision.encoder.layers, str(i), "vision", "linears") for i in range(len(vision.encoder.layers))]
    return parts + [(owner, "projector", "vision", "linears")]


def model_parts(model: nn.Module) -> list[Part]:
    """MobileVLM as pieces small enough to materialise and quantise one at a time.

    Kinds: linears (decoder / ViT layers, projector: int modes replace their linears), head (lm_head), embedding (the token
    table: int8 rows in both int modes), keep (ViT embeddings, norms: only cast by bf16/fp16).
    """
    llm = model.llm
    # the two vocabulary-sized tables first: each is briefly whole in fp32, best while little else is loaded
    parts = [(llm, "embed_tokens", "llm", "embedding"), (llm, "lm_head", "llm", "head"), (llm, "norm", "llm", "keep")]
    parts += [(llm.layers, str(i), "llm", "linears") for i in range(len(llm.layers))]
    return parts + (vision_parts(model) if model.vision is not None else [])


def quantize_part(parent: nn.Module, attr: str, kind: str, mode: str, group_size: int) -> None:
    """Quantise one piece in place to its side's mode. bf16/fp16 cast every piece; int modes replace linears.

    lm_head is int8 in both int modes: the logits are the most sensitive layer (llama.cpp keeps it wider too); so is
    the token table (llama.cpp's token_embd is quantised as well).
    """
    part = getattr(parent, attr)
    if mode in FLOAT_MODES:
        part.to(FLOAT_MODES[mode])
    elif mode != "none" and kind == "head":
        with torch.no_grad():
            setattr(parent, attr, Int8Linear(part.weight))
    elif mode != "none" and kind == "embedding":
        with torch.no_grad():
            setattr(parent, attr, Int8Embedding(part.weight))
    elif mode != "none" and kind == "linears":
        quantize_linears(part, mode, group_size)


def quantize_model(model: nn.Module, mode: str = "none", group_size: int = 64, vision_mode: str = "none",
                   materialise: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Quantise a MobileVLM in place, piece by piece: the decoder to `mode`, the ViT + projector to `vision_mode`.

    `materialise(piece)` first fills each piece of a model built on the meta device (see random_model), so only one
    piece is ever whole in fp32."""
    check_modes(mode, group_size, vision_mode)
    if (mode, vision_mode) != ("none", "none"):
        limit_heap_retention()
    for parent, attr, side, kind in model_parts(model):
        if materialise is not None:
            materialise(getattr(parent, attr))
        quantize_part(parent, attr, kind, mode if side == "llm" else vision_mode, group_size)
        release_freed_memory()
    return model


def check_modes(mode: str, group_size: int, vision_mode: str) -> None:
    check_mode(mode, group_size)
    if vision_mode not in VISION_QUANT_MODES:
        raise ConfigError(f"the vision tower supports {', '.join(VISION_QUANT_MODES)}, got {vision_mode!r} (int4 costs too much feature accuracy)")
