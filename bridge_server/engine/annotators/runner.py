"""The engine's runner of the contour/depth networks (recipes.Annotate). Imports torch only when first used, so
the daemon and the CLI start without it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bridge_server.models.layout import ANNOTATOR_FILES, ModelLayout


class AnnotatorRunner:
    """The annotators of one model folder: loaded on first use, kept on the CPU, moved to the engine's device for
    each image and back, as the authors' `edit_preprocess` does (they build the annotator, move it to the GPU, run
    it and move it back). `device`: a device name, or a callable giving it at run time (the engine's choice)."""

    def __init__(self, root: Path, device: str | Callable[[], str] | None = None) -> None:
        self.layout = ModelLayout(Path(root))
        self._device = device
        self._nets: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        """The annotators held in memory now."""
        return sorted(self._nets)

    def release(self) -> None:
        """Drop the loaded networks (the engine's unload): the next use reads the files again."""
        with self._lock:
            self._nets.clear()

    def available(self, kind: str) -> bool:
        return self.layout.has_annotator(kind)

    def device(self) -> str:
        if callable(self._device):
            return self._device()
        if self._device is not None:
            return self._device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def __call__(self, kind: str, rgb: np.ndarray) -> np.ndarray:
        if kind not in ANNOTATOR_FILES:
            raise ValueError(f"no annotator network {kind!r}")
        import torch

        from bridge_server.engine.annotators import weights

        with self._lock:
            net = self._nets.get(kind)
            if net is None:
                net = self._nets[kind] = weights.load_annotator(kind, self.layout.annotator(kind))
            device = self.device()
            run = weights.run_contour if kind == "contour" else weights.run_depth
            try:
                return run(net.to(device), rgb, device)
            except torch.OutOfMemoryError:
                # The contour network runs at the region's full size (as the authors run it); a large region next
                # to a loaded FLUX may not fit the GPU. The CPU gives the same float32 result, only slower.
                net.to("cpu")
                torch.cuda.empty_cache()
                return run(net, rgb, "cpu")
            finally:
                net.to("cpu")
