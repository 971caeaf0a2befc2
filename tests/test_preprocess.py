"""Image decoding and CLIP preprocessing (checked against transformers' CLIPImageProcessor)."""
from __future__ import annotations

import numpy as np
import pytest

from mobilevlm_agent.errors import InputError
from mobilevlm_agent.preprocess import PAD_COLOR, expand2square, load_image, preprocess


def test_pad_colour_is_clip_mean_in_bytes():
    assert PAD_COLOR == (122, 116, 104)


@pytest.mark.parametrize("h,w", [(40, 100), (100, 40)])
def test_expand2square_centres_the_image(h, w):
    img = np.full((h, w, 3), 7, np.uint8)
    sq = expand2square(img)
    side = max(h, w)
    assert sq.shape == (side, side, 3)
    top, left = (side - h) // 2, (side - w) // 2
    assert (sq[top : top + h, left : left + w] == 7).all()
    assert tuple(sq[0, 0]) == PAD_COLOR if (top or left) else True
    assert tuple(sq[-1, -1]) == PAD_COLOR


def test_matches_clip_image_processor():
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (201, 333, 3), dtype=np.uint8)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    expected = processor(images=expand2square(img), return_tensors="pt")["pixel_values"]
    got = preprocess(img, 336, pad_to_square=True)
    assert got.shape == expected.shape == (1, 3, 336, 336)
    diff = (got - expected).abs().max().item()
    print(f"preprocess vs CLIPImageProcessor: max abs diff {diff:.2e}")
    assert diff <= 1e-6


def test_load_image_any_format(tmp_path, scene_image):
    from PIL import Image

    rgb = load_image(scene_image)
    gif = tmp_path / "scene.gif"
    Image.fromarray(rgb).save(gif)
    assert load_image(gif).shape == rgb.shape


def test_bad_images(tmp_path):
    with pytest.raises(InputError, match="image not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot decode image"):
        load_image(bad)
    with pytest.raises(InputError, match="expected an RGB uint8 image"):
        preprocess(np.zeros((10, 10), np.uint8), 112)
    with pytest.raises(InputError, match="empty image"):
        preprocess(np.zeros((0, 10, 3), np.uint8), 112)
