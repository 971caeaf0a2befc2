"""The CLIP vision tower: changing its input resolution."""
from __future__ import annotations

import pytest
import torch

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.model.random_init import random_model


def test_vision_resize_resamples_patch_positions_row_major_and_keeps_the_class_position():
    """Fine-tuning at a new resolution: 8x8 patches -> 12x12. A table that varies only down the rows stays that way
    (a transposed reshape would make it vary along them), keeps its order, and the class token's row is untouched."""
    model = random_model("tiny-vlm-v2", seed=0)
    table = model.vision.embeddings.position_embedding.weight
    with torch.no_grad():
        rows = torch.arange(8.0).repeat_interleave(8)[:, None] * torch.linspace(1, 2, table.shape[1])  # [64, C]
        table[1:] = rows
    cls_row = table[0].clone()
    same = model.vision.resize(112)
    assert same.grid_size == 8 and torch.equal(model.vision.embeddings.position_embedding.weight[1:], rows)
    cfg = model.vision.resize(168)
    resized = model.vision.embeddings.position_embedding.weight
    assert cfg.image_size == 168 and resized.shape == (1 + 144, table.shape[1])
    assert torch.equal(resized[0], cls_row)
    grid = resized[1:].view(12, 12, -1)
    assert torch.allclose(grid, grid[:, :1].expand_as(grid), atol=1e-5)  # constant along each row
    assert (grid[1:, 0, 0] >= grid[:-1, 0, 0] - 1e-5).all() and grid[-1, 0, 0] > grid[0, 0, 0] + 5
    features = model.vision(torch.zeros(1, 3, 168, 168))
    assert features.shape == (1, 144, cfg.hidden_size)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        model.vision.resize(170)
