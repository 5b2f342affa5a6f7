"""What a result is: the region's pixels, straight alpha = the selection feathered inward (0 outside it).

Feathering inward (erode, then blur, then multiply by the selection) keeps every pixel outside the selection at
alpha 0, so inserting the result never changes anything the user did not select, and the seam fades inside.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def feathered_alpha(mask: np.ndarray | None, shape: tuple[int, int], feather: int) -> np.ndarray:
    """uint8 HxW alpha. No mask: the whole region is the result (alpha 255)."""
    height, width = shape
    if mask is None or not mask.any():
        return np.full((height, width), 255, np.uint8)
    if feather <= 0:
        return np.ascontiguousarray(mask, dtype=np.uint8)
    radius = max(1, feather // 2)
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    eroded = img.filter(ImageFilter.MinFilter(2 * min(radius, 24) + 1))
    soft = np.asarray(eroded.filter(ImageFilter.GaussianBlur(radius / 2)), dtype=np.float32)
    alpha = soft * (mask.astype(np.float32) / 255.0)
    return np.clip(np.rint(alpha), 0, 255).astype(np.uint8)


def make_result(rgb: np.ndarray, mask: np.ndarray | None, feather: int) -> np.ndarray:
    """HxWx4 straight-alpha RGBA from the engine's RGB and the request's mask."""
    height, width = rgb.shape[:2]
    out = np.empty((height, width, 4), np.uint8)
    out[..., :3] = rgb[..., :3]
    out[..., 3] = feathered_alpha(mask, (height, width), feather)
    return out


def composite_over(base: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """Straight-alpha `patch` over `base` (same size, RGBA). Where patch alpha is 0 the base is kept bit for bit."""
    alpha = patch[..., 3:4].astype(np.float32) / 255.0
    out = base.astype(np.float32)
    out[..., :3] = patch[..., :3] * alpha + out[..., :3] * (1.0 - alpha)
    out[..., 3:4] = 255.0 * alpha + out[..., 3:4] * (1.0 - alpha)
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    keep = patch[..., 3] == 0
    result[keep] = base[keep]
    return result
