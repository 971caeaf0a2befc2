"""LDP / LDPv2 against a functional reference written from the spec, parameter counts, and token grids."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mobilevlm_agent.model.config import MobileVLMConfig
from mobilevlm_agent.model.projector import build_projector
from mobilevlm_agent.model.vlm import MobileVLM


def ref_channel_ln(x, w, b):
    mean = x.mean(1, keepdim=True)
    var = x.var(1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-5) * w[None, :, None, None] + b[None, :, None, None]


def ref_inverted_residual(x, sd, prefix, stride):
    c = x.shape[1]
    y = F.conv2d(x, sd[prefix + "block.0.0.weight"], stride=stride, padding=1, groups=c)
    y = ref_channel_ln(y, sd[prefix + "block.0.1.weight"], sd[prefix + "block.0.1.bias"])
    y = y * torch.clamp(y + 3, 0, 6) / 6  # hardswish
    s = y.mean((2, 3), keepdim=True)
    s = torch.relu(F.conv2d(s, sd[prefix + "block.1.fc1.weight"], sd[prefix + "block.1.fc1.bias"]))
    s = torch.clamp(F.conv2d(s, sd[prefix + "block.1.fc2.weight"], sd[prefix + "block.1.fc2.bias"]) + 3, 0, 6) / 6  # hardsigmoid
    y = y * s
    y = F.conv2d(y, sd[prefix + "block.2.0.weight"])
    y = ref_channel_ln(y, sd[prefix + "block.2.1.weight"], sd[prefix + "block.2.1.bias"])
    return y + x if stride == 1 else y


def gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_ldp(x, sd):
    """Spec: MLP (Linear, exact GELU, Linear) -> grid -> IR block stride 1 (+res) -> IR block stride 2 -> tokens."""
    h = gelu_erf(x @ sd["model.mlp.1.weight"].T + sd["model.mlp.1.bias"]) @ sd["model.mlp.3.weight"].T + sd["model.mlp.3.bias"]
    b, n, c = h.shape
    g = math.isqrt(n)
    grid = h.permute(0, 2, 1).reshape(b, c, g, g)
    grid = ref_inverted_residual(grid, sd, "model.mb_block.1.", 1)
    grid = ref_inverted_residual(grid, sd, "model.mb_block.2.", 2)
    return grid.flatten(2).permute(0, 2, 1)


def ref_ldpv2(x, sd):
    """Spec: MLP -> 2x2 average pool -> depthwise 3x3 conv with bias + residual."""
    h = gelu_erf(x @ sd["mlp.mlp.0.weight"].T + sd["mlp.mlp.0.bias"]) @ sd["mlp.mlp.2.weight"].T + sd["mlp.mlp.2.bias"]
    b, n, c = h.shape
    g = math.isqrt(n)
    grid = F.avg_pool2d(h.transpose(1, 2).reshape(b, c, g, g), 2, ceil_mode=True)
    grid = F.conv2d(grid, sd["peg.peg.0.weight"], sd["peg.peg.0.bias"], padding=1, groups=c) + grid
    return grid.flatten(2).transpose(1, 2)


def randomised(module):
    torch.manual_seed(0)
    for p in module.parameters():
        p.data.normal_(0, 0.1)
    return module.eval()


@pytest.mark.parametrize("grid", [24, 8])
def test_ldp_matches_spec_reference(grid):
    proj = randomised(build_projector("ldpnet", 48, 64))
    x = torch.randn(2, grid * grid, 48)
    with torch.no_grad():
        got, expected = proj(x), ref_ldp(x, proj.state_dict())
    assert got.shape == (2, (grid // 2) ** 2, 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [24, 8])
def test_ldpv2_matches_spec_reference(grid):
    proj = randomised(build_projector("ldpnetv2", 48, 64))
    x = torch.randn(2, grid * grid, 48)
    with torch.no_grad():
        got, expected = proj(x), ref_ldpv2(x, proj.state_dict())
    assert got.shape == (2, (grid // 2) ** 2, 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ldp_residual_only_on_stride_1_block():
    proj = build_projector("ldpnet", 16, 32)
    assert [b.use_residual for b in proj.model.mb_block[1:]] == [True, False]


@pytest.mark.parametrize("name,expected", [
    ("MobileVLM-1.7B", 18_936_832), ("MobileVLM-3B", 28_913_920),
    ("MobileVLM_V2-1.7B", 6_316_032), ("MobileVLM_V2-3B", 9_205_760), ("MobileVLM_V2-7B", 21_020_672),
])
def test_projector_parameter_counts(name, expected):
    with torch.device("meta"):
        model = MobileVLM(MobileVLMConfig.from_name(name))
    assert sum(p.numel() for p in model.projector.parameters()) == expected
    assert model.config.num_visual_tokens == 144


@pytest.mark.parametrize("kind", ["ldpnet", "ldpnetv2"])
def test_odd_grid_rounds_up(kind):
    out = build_projector(kind, 8, 16)(torch.randn(1, 49, 8))
    assert out.shape == (1, 16, 16)  # 7x7 -> 4x4


@pytest.mark.parametrize("kind,tokens", [("mlp2x_gelu", 36), ("linear", 36)])
def test_llava_projectors_keep_tokens(kind, tokens):
    assert build_projector(kind, 8, 16)(torch.randn(1, tokens, 8)).shape == (1, tokens, 16)


def test_non_square_token_count_is_rejected():
    with pytest.raises(ValueError, match="square token grid"):
        build_projector("ldpnet", 8, 16)(torch.randn(1, 50, 8))


def test_unknown_projector_type_is_rejected():
    with pytest.raises(ValueError, match="unknown mm_projector_type 'qformer'"):
        build_projector("qformer", 8, 16)
