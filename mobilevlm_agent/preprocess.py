"""Image decoding and CLIP preprocessing: expand2square (mean-colour pad), bicubic resize, centre crop, normalise."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from mobilevlm_agent.errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104)
_MEAN = np.array(CLIP_MEAN, dtype=np.float32)  # built once: normalize runs for every training sample
_STD = np.array(CLIP_STD, dtype=np.float32)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Any image OpenCV or PIL can read -> RGB uint8 [H, W, 3]."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    data = np.fromfile(p, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:  # formats OpenCV lacks (e.g. GIF)
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise InputError(f"cannot decode image {p}: not a readable image file ({type(e).__name__})") from e


def expand2square(rgb: np.ndarray, fill: tuple[int, int, int] = PAD_COLOR) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    side = max(h, w)
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = fill
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


def resize_and_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shortest edge to `size` with PIL bicubic (antialiased, as CLIPImageProcessor), then centre crop."""
    h, w = rgb.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_w, new_h = (new_long, size) if h <= w else (size, new_long)
    if (new_w, new_h) != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return rgb[top : top + size, left : left + size]


def fit_image(rgb: np.ndarray, image_size: int, pad_to_square: bool = True) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> the model's square RGB uint8 [S, S, 3] (expand2square or not, then resize and crop)."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise InputError(f"expected an RGB uint8 image of shape [H, W, 3], got {desc}")
    if min(rgb.shape[:2]) == 0:
        raise InputError(f"empty image of shape {rgb.shape}")
    if pad_to_square:
        rgb = expand2square(rgb)
    return resize_and_crop(rgb, image_size)


def normalize(fitted: np.ndarray) -> torch.Tensor:
    """Square RGB uint8 [S, S, 3] -> CLIP-normalised pixel values [1, 3, S, S] float32."""
    x = (fitted.astype(np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def preprocess(rgb: np.ndarray, image_size: int, pad_to_square: bool = True) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> normalised pixel values [1, 3, S, S] float32."""
    return normalize(fit_image(rgb, image_size, pad_to_square))


def frame_key(rgb: np.ndarray) -> str:
    """Identity of a frame's pixels: visual tokens are cached per key, so an unchanged frame is never re-encoded."""
    return hashlib.blake2b(rgb.tobytes(), digest_size=12).hexdigest() + str(rgb.shape)
