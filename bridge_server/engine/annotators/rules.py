"""The authors' pre- and post-processing around the two annotator networks (numpy + OpenCV, no torch).

Contour (scepter InfoDrawContourAnnotator.forward): the RGB uint8 image at its own size, divided by 255 (no
mean/std), through the network in float32; the 1-channel sigmoid output times 255, clipped to 0..255 and truncated
(`astype(uint8)`, no rounding), replicated to 3 channels.

Depth (scepter MidasDetector.forward): `resize_image(img, 1024 if min(h, w) > 1024 else min(h, w))`, i.e. scale
the short side to that resolution and round each side to a multiple of 64 (`np.round`, half to even), OpenCV
INTER_AREA when shrinking or keeping the scale, INTER_LANCZOS4 when growing; then `/ 127.5 - 1`; the network's
depth map is shifted to a minimum of 0, divided by its maximum, times 255, clipped and truncated, replicated to 3
channels and resized back to (w, h) with the same interpolation rule.

Deliberate differences (where the authors' code fails, never where it runs):
- contour: the network returns 4 * ceil(side / 4) pixels; the authors' composite then fails for sides that are not
  multiples of 4. We keep the top-left h x w, which is where the input pixels are;
- depth: a short side under 32 px rounds to 0 rows there (OpenCV raises); we keep at least 64 px;
- depth: a flat depth map (max - min = 0) divides 0 by 0 there (NaN, then an undefined cast); we return black.
"""

from __future__ import annotations

import cv2
import numpy as np

DEPTH_MAX_SHORT_SIDE = 1024  # MidasDetector: resize_image(img, 1024 if min(h, w) > 1024 else min(h, w))
DEPTH_MULTIPLE = 64  # resize_image rounds both sides to multiples of 64
CONTOUR_MULTIPLE = 4  # two stride-2 convolutions and two 2x transposed ones


def contour_input(rgb: np.ndarray) -> np.ndarray:
    """float32 1x3xHxW in [0, 1]: the RGB image divided by 255, nothing else."""
    return (np.ascontiguousarray(rgb, np.float32) / 255.0).transpose(2, 0, 1)[None]


def contour_output(net_out: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HxWx3 from the network's float 1x1xH'xW' sigmoid output (H' >= height)."""
    plane = np.asarray(net_out, np.float32).reshape(net_out.shape[-2:])[:height, :width]
    grey = np.clip(plane * 255.0, 0, 255).astype(np.uint8)  # truncation, as the authors' astype
    return np.repeat(grey[..., None], 3, axis=2)


def depth_scale(height: int, width: int) -> float:
    """The authors' k: the target short side over the image's short side (never above 1)."""
    short = min(height, width)
    resolution = DEPTH_MAX_SHORT_SIDE if short > DEPTH_MAX_SHORT_SIDE else short
    return float(resolution) / short


def depth_input_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) the depth network sees: the sides scaled by k, rounded to multiples of 64 (at least 64)."""
    k = depth_scale(height, width)
    h = int(np.round(float(height) * k / DEPTH_MULTIPLE)) * DEPTH_MULTIPLE
    w = int(np.round(float(width) * k / DEPTH_MULTIPLE)) * DEPTH_MULTIPLE
    return max(DEPTH_MULTIPLE, w), max(DEPTH_MULTIPLE, h)


def _interpolation(k: float) -> int:
    return cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA


def depth_input(rgb: np.ndarray) -> np.ndarray:
    """float32 1x3xH'xW' in [-1, 1]: resized as the authors' resize_image, then / 127.5 - 1."""
    height, width = rgb.shape[:2]
    size = depth_input_size(height, width)
    small = cv2.resize(
        np.ascontiguousarray(rgb, np.uint8), size, interpolation=_interpolation(depth_scale(height, width))
    )
    return (small.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def depth_output(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HxWx3 from the network's float H'xW' depth: min-max to 0..255 (truncated), back to height x width."""
    d = np.asarray(depth, np.float32).reshape(depth.shape[-2:])
    d = d - d.min()
    top = float(d.max())
    grey = np.zeros(d.shape, np.uint8) if top <= 0 else np.clip(d / top * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    return cv2.resize(rgb, (width, height), interpolation=_interpolation(depth_scale(height, width)))
