"""Vision-to-language projectors: LDP (MobileVLM), LDPv2 (MobileVLM V2), and LLaVA's mlp2x_gelu / linear.

Module trees mirror the official checkpoints (including the Identity placeholders that shift key indices).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mobilevlm_agent.errors import ConfigError


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding, used for the squeeze-excite width."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    """[B, N, C] row-major tokens -> [B, C, g, g]; N must be a perfect square."""
    b, n, c = x.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ConfigError(f"projector needs a square token grid, got {n} tokens")
    return x.transpose(1, 2).reshape(b, c, g, g)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # [B, C, g, g] -> [B, g*g, C]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (timm's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV3 block with expansion 1 (no expand conv): DW3x3 -> LN -> Hardswish -> SE -> PW1x1 -> LN."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.use_residual = stride == 1
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
                ChannelLayerNorm(channels, eps=1e-5),
                nn.Hardswish(),
            ),
            SqueezeExcitation(channels, make_divisible(channels // 4)),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), ChannelLayerNorm(channels, eps=1e-5)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_residual else y


class LDPBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(out_dim, 1), InvertedResidual(out_dim, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grid_to_tokens(self.mb_block(tokens_to_grid(self.mlp(x))))


class LDPProjector(nn.Module):
    """MobileVLM V1 (`ldpnet`): [B, g*g, C_vision] -> [B, ceil(g/2)^2, H]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.model = LDPBlock(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Wrapped(nn.Module):
    """A Sequential stored one level down, as `<name>.<name>.N` in the checkpoint."""

    def __init__(self, attr: str, *layers: nn.Module) -> None:
        super().__init__()
        self.attr = attr
        setattr(self, attr, nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attr)(x)


class LDPv2Projector(nn.Module):
    """MobileVLM V2 (`ldpnetv2`): MLP -> 2x2 average pool -> PEG (depthwise 3x3 conv + residual)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = _Wrapped("mlp", nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.peg = _Wrapped("peg", nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tokens_to_grid(self.mlp(x))
        grid = F.adaptive_avg_pool2d(grid, math.ceil(grid.shape[-1] / 2))  # 24x24 -> 12x12 (exactly a 2x2 pool)
        return grid_to_tokens(self.peg(grid) + grid)


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    # "ldpnetv2" also starts with "ldpnet": check it first, as the official factory does.
    if projector_type.startswith("ldpnetv2"):
        return LDPv2Projector(in_dim, out_dim)
    if projector_type.startswith("ldpnet"):
        return LDPProjector(in_dim, out_dim)
    if projector_type == "linear":
        return nn.Linear(in_dim, out_dim)
    if projector_type.startswith("mlp") and projector_type.endswith("x_gelu"):
        depth = int(projector_type[3:-6])
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    raise ConfigError(f"unknown mm_projector_type {projector_type!r}; expected ldpnet, ldpnetv2, mlpNx_gelu or linear")
