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
    alpha = feathered_alpha(mask, (height, width), feather)
    backing = _rgba_backing(rgb)
    if backing is not None:
        out = backing.copy()  # one contiguous copy instead of a 3-of-4-bytes strided one (7x faster at 2048²)
    else:
        out = np.empty((height, width, 4), np.uint8)
        out[..., :3] = rgb[..., :3]
    out[..., 3] = alpha
    return out


def _rgba_backing(rgb: np.ndarray) -> np.ndarray | None:
    """When `rgb` is the first three channels of a C-contiguous RGBA buffer (an engine that returns
    `rgba[..., :3]`), the RGBA view of that buffer; else None. The 4th byte of every pixel is checked to lie inside
    the memory of the array that owns `rgb`'s data, so the widened view never reads outside it."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return None
    height, width = rgb.shape[:2]
    if rgb.strides != (width * 4, 4, 1):
        return None
    owner = rgb
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if owner is rgb or not owner.flags.c_contiguous:
        return None
    low = owner.__array_interface__["data"][0]
    high = low + owner.nbytes
    start = rgb.__array_interface__["data"][0]
    if start < low or start + height * width * 4 > high:
        return None
    return np.lib.stride_tricks.as_strided(rgb, shape=(height, width, 4), strides=(width * 4, 4, 1), writeable=False)


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
