"""CLIP ViT vision tower: pre-LN, quick_gelu, class token; runs only the layers up to the selected one."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.model.config import VisionConfig


class CLIPAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # [B, 1 + patches, C]
        q, k, v = (p(x).view(b, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), no mask: every patch sees every patch
        return self.out_proj(y.transpose(1, 2).reshape(b, t, c))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [B, grid*grid, C], row-major
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight

    @torch.no_grad()
    def resize(self, grid: int) -> None:
        """Take a grid x grid patch input: the patch positions' table is resampled (bicubic, as the ViT papers do
        when fine-tuning at a higher resolution); the class token's position stays."""
        table = self.position_embedding.weight
        old = int(round((table.shape[0] - 1) ** 0.5))
        patches = table[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)
        self.position_embedding = nn.Embedding(grid * grid + 1, table.shape[1], device=table.device, dtype=table.dtype)
        self.position_embedding.weight.copy_(torch.cat([table[:1], patches]))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(num_layers))


class CLIPVisionTower(nn.Module):
    """Returns patch features of hidden_states[select_layer] (CLS dropped, no post-LN): [B, patches, C].

    Only `num_layers` encoder layers are built; layers after the selected one are never run or loaded.
    """

    def __init__(self, cfg: VisionConfig, num_layers: int) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # HF's spelling, kept for key names
        self.encoder = CLIPEncoder(cfg, num_layers)

    def resize(self, image_size: int) -> VisionConfig:
        """Change the input resolution (fine-tuning at a new size); returns the new config."""
        cfg = dataclasses.replace(self.config, image_size=image_size)
        if cfg.grid_size < 2:
            raise ConfigError(f"image_size {image_size} gives fewer than 2 x 2 patches of {cfg.patch_size} px")
        self.embeddings.resize(cfg.grid_size)
        self.config = cfg
        return cfg

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(pixel_values.to(self.pre_layrnorm.weight.dtype)))
        for layer in self.encoder.layers:
            x = layer(x)
        return x[:, 1:]
