"""MobileLLaMA: a LLaMA decoder (RMSNorm, rotate-half RoPE, SwiGLU, MHA/GQA) with a preallocated KV cache."""
from __future__ import annotations

from collections.abc import Hashable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mobilevlm_agent.model.config import LlamaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # accumulate in fp32 whatever the activation dtype
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables in HF's rotate-half layout, grown on demand (context may exceed max_position_embeddings)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None

    def forward(self, start: int, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + length
        if self._cos is None or self._cos.shape[0] < end or self._cos.device != like.device:
            size = max(end, 2 * (self._cos.shape[0] if self._cos is not None else 0), 256)
            inv_freq = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, device=like.device, dtype=torch.float32) / self.head_dim)
            freqs = torch.outer(torch.arange(size, device=like.device, dtype=torch.float32), inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            self._cos, self._sin = emb.cos(), emb.sin()
        return self._cos[start:end].to(like.dtype), self._sin[start:end].to(like.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, heads, T, D]; cos/sin: [T, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache(nn.Module):
    """Keys and values preallocated once as [B, kv_heads, max_seq, head_dim]; written by position."""

    def __init__(self, batch: int, kv_heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (batch, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq(self) -> int:
        return self.k.shape[2]

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v at positions [start, start+T) and return every cached position up to start+T."""
        end = start + k.shape[2]
        self.k[: k.shape[0], :, start:end] = k
        self.v[: v.shape[0], :, start:end] = v
        return self.k[: k.shape[0], :, :end], self.v[: v.shape[0], :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(start, k, v)
        if self.n_kv != self.n_heads:  # GQA: share each kv head across its group of query heads
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(start, t, k.shape[2], x.device), is_causal=start == 0 and t > 1)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


def causal_mask(start: int, t: int, kv_len: int, device: torch.device) -> torch.Tensor | None:
    """None where SDPA's own handling is exact (a fresh prompt, or one new token seeing the whole cache)."""
    if start == 0 or t == 1:
        return None
    query_pos = torch.arange(start, start + t, device=device)[:, None]
    return torch.arange(kv_len, device=device)[None, :] <= query_pos  # [T, kv_len], True = may attend


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class CachedPrefix:
    """What each cached position holds (a token id, or a key naming one image's visual token), so any caller can
    reuse the longest common prefix: the system prompt across queries, the history across chat turns. Shared by
    every decoder backend."""

    cache_keys: list[Hashable]

    def reusable_prefix(self, keys: list[Hashable]) -> int:
        """How many leading positions of `keys` the cache already holds (at least one is always left to prefill)."""
        n = 0
        for cached, key in zip(self.cache_keys, keys):
            if cached != key:
                break
            n += 1
        return min(n, len(keys) - 1)


def grown_capacity(needed: int, current: int) -> int:
    """KV capacity for `needed` positions: geometric growth (few copies over a long chat), multiples of 64."""
    if current:
        needed = max(needed, 2 * current)
    return (needed + 63) // 64 * 64


class MobileLLaMA(nn.Module, CachedPrefix):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.cache_keys: list[Hashable] = []
        self.grad_checkpointing = False  # recompute each layer in backward instead of storing its activations

    # -- KV cache ----------------------------------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_seq: int) -> None:
        """Allocate the KV cache once. A size that fits reuses it; a longer one grows it, keeping its contents."""
        old = self.layers[0].self_attn.kv_cache
        if old is not None and old.k.shape[0] >= batch and old.max_seq >= max_seq:
            return
        max_seq = grown_capacity(max_seq, old.max_seq if old is not None else 0)
        p = self.norm.weight  # the activations' dtype and device (the token table may be int8)
        # normal tensors even when called under inference_mode, so later no_grad forwards may still write them
        with torch.inference_mode(False), torch.no_grad():
            for layer in self.layers:
                a = layer.self_attn
                new = KVCache(batch, a.n_kv, max_seq, a.head_dim, p.dtype, p.device)
                if a.kv_cache is not None:
                    keep_b, keep_s = min(batch, a.kv_cache.k.shape[0]), a.kv_cache.max_seq
                    new.k[:keep_b, :, :keep_s] = a.kv_cache.k[:keep_b]
                    new.v[:keep_b, :, :keep_s] = a.kv_cache.v[:keep_b]
                a.kv_cache = new

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.kv_cache = None
        self.cache_keys = []

    @property
    def cache_capacity(self) -> int:
        cache = self.layers[0].self_attn.kv_cache
        return cache.max_seq if cache is not None else 0

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for tokens at positions [start, start+T). With a cache, earlier positions come from it.

        input_ids: [B, T] or inputs_embeds: [B, T, H]. last_only skips the lm_head for all but the final position
        (prefill needs only the next-token logits).
        """
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if start > 0 and self.layers[0].self_attn.kv_cache is None:
            raise RuntimeError("start > 0 needs a KV cache holding the earlier positions; call setup_cache first")
        if self.layers[0].self_attn.kv_cache is not None:
            del self.cache_keys[start:]  # overwritten now; the caller labels what it wrote
        cos, sin = self.rope(start, x.shape[1], x)
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, start, use_reentrant=False)
            else:
                x = layer(x, cos, sin, start)
        x = self.norm(x[:, -1:] if last_only else x)
        return self.lm_head(x)

    def prefill(self, inputs_embeds: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run a prompt (or a continuation of a cached one) through the cache; return next-token logits [B, V]."""
        return self.forward(inputs_embeds=inputs_embeds, start=start, last_only=True)[:, -1]

    def decode_one(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """One new token per sequence at position `pos`: token [B] -> logits [B, V]."""
        return self.forward(input_ids=token.view(-1, 1), start=pos)[:, -1]
