"""Small builders shared by the integration tests: a test image with an elliptical selection, a client."""

from __future__ import annotations

import numpy as np
from ace_protocol.client import BridgeClient
from ace_protocol.images import ImagePayload


def gradient_image(width: int = 96, height: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    rgba[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    rgba[..., 2] = 128
    rgba[..., 3] = 255
    return rgba


def ellipse_mask(width: int = 96, height: int = 64, soft: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    d = ((x - width / 2) / (width / 3)) ** 2 + ((y - height / 2) / (height / 3)) ** 2
    if soft:
        return np.clip((1.2 - d) / 0.4 * 255, 0, 255).astype(np.uint8)
    return np.where(d <= 1, 255, 0).astype(np.uint8)


def rgba_payload(array: np.ndarray) -> ImagePayload:
    return ImagePayload(array.shape[1], array.shape[0], "rgba8", array.tobytes())


def gray_payload(array: np.ndarray) -> ImagePayload:
    return ImagePayload(array.shape[1], array.shape[0], "gray8", array.tobytes())


def result_array(event) -> np.ndarray:
    return np.frombuffer(event.image.data, np.uint8).reshape(event.image.height, event.image.width, 4)


def connect(daemon, client_id: str = "test-client", **kwargs) -> BridgeClient:
    client = BridgeClient(
        daemon.url,
        daemon.token,
        client_id=client_id,
        client_name="pytest",
        editor="pytest",
        reconnect_timeout=kwargs.pop("reconnect_timeout", 20),
        **kwargs,
    )
    client.connect()
    return client


def collect(handle, timeout: float = 60) -> list:
    return list(handle.events(timeout=timeout))


def types(events) -> list[str]:
    return [e.TYPE for e in events]
