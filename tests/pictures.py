"""Test pictures and their wire payloads, shared by every suite: a gradient "layer", elliptical and square
selections as 8-bit masks, and the result of a job back as an array."""

from __future__ import annotations

import numpy as np
from ace_protocol.images import ImagePayload


def gradient_image(width: int = 96, height: int = 64, blue: int = 128) -> np.ndarray:
    """Opaque RGBA: red rises left to right, green top to bottom, so any shift or flip shows."""
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    rgba[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    rgba[..., 2] = blue
    rgba[..., 3] = 255
    return rgba


def ellipse_mask(width: int = 96, height: int = 64, soft: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    d = ((x - width / 2) / (width / 3)) ** 2 + ((y - height / 2) / (height / 3)) ** 2
    if soft:
        return np.clip((1.2 - d) / 0.4 * 255, 0, 255).astype(np.uint8)
    return np.where(d <= 1, 255, 0).astype(np.uint8)


def square_mask(width: int = 32, height: int = 32) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return mask


def rgba_payload(array: np.ndarray) -> ImagePayload:
    return ImagePayload(array.shape[1], array.shape[0], "rgba8", array.tobytes())


def gray_payload(array: np.ndarray) -> ImagePayload:
    return ImagePayload(array.shape[1], array.shape[0], "gray8", array.tobytes())


def result_array(event) -> np.ndarray:
    return np.frombuffer(event.image.data, np.uint8).reshape(event.image.height, event.image.width, 4)
