"""Pixel buffers as flat byte views, whatever object holds them (bytes, numpy arrays, QByteArrays, mappings)."""

from __future__ import annotations

from typing import Any


def byte_view(data: Any) -> memoryview:
    """A one-dimensional unsigned-byte view of `data`, without copying: what writes, slices and `nbytes` need."""
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view
