"""Builders shared by the integration tests: a connected client, a job's events (pictures: tests/pictures.py)."""

from __future__ import annotations

from ace_protocol.client import BridgeClient
from pictures import ellipse_mask, gradient_image, gray_payload, result_array, rgba_payload

__all__ = [
    "collect",
    "connect",
    "ellipse_mask",
    "gradient_image",
    "gray_payload",
    "result_array",
    "rgba_payload",
    "types",
]


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
