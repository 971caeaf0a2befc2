"""LoRA: low-rank adapters on chosen linear layers, merged back into plain weights for export."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mobilevlm_agent.errors import ConfigError


class LoRALinear(nn.Linear):
    """y = x W^T + (alpha/r) * dropout(x) A^T B^T. `weight` keeps its name, so base checkpoints load unchanged."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device=base.weight.device, dtype=base.weight.dtype)
        self.weight, self.bias = base.weight, base.bias
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))  # starts as a no-op
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale, self.dropout = alpha / r, nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + (self.lora_B @ self.lora_A).to(self.weight.dtype) * self.scale)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def apply_lora(module: nn.Module, r: int, alpha: float, dropout: float, targets: list[str]) -> int:
    """Wrap every nn.Linear whose attribute name is in `targets`; freeze everything else. Returns how many."""
    for p in module.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and type(child) is nn.Linear:
                setattr(parent, name, LoRALinear(child, r, alpha, dropout))
                wrapped += 1
    if not wrapped:
        raise ConfigError(f"LoRA targets {targets} match no linear layer")
    return wrapped


def merge_lora(module: nn.Module) -> None:
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if ".lora_" in k}
