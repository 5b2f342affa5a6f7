"""torch.compile's caches kept between daemon starts, so only the first start pays for compiling.

Two layers, both in one folder (the daemon's data dir, `compile-cache/`):
  inductor/       TORCHINDUCTOR_CACHE_DIR: the FX graph, AOTAutograd, PGO (dynamic-shape decisions) and Triton
                  caches. torch keeps them in the system temp dir by default, which many systems empty at boot.
  artifacts.bin   torch.compiler.save_cache_artifacts() ("mega-cache"): the same artifacts as one portable blob,
                  saved after a warm-up and hot-loaded at the next start before anything compiles.
torch checks its own version, the Triton version and the GPU when it reads either, so a stale cache is ignored, not
misused. A user's own TORCHINDUCTOR_CACHE_DIR is respected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
INDUCTOR_DIR = "inductor"
ARTIFACTS = "artifacts.bin"
_loaded: set[Path] = set()  # artifacts are hot-loaded once per process
_ours: set[str] = set()  # TORCHINDUCTOR_CACHE_DIR values set here (a user's own value is never replaced)


def activate(folder: Path) -> dict[str, str]:
    """Point torch's compile caches at `folder` and hot-load the saved artifacts. Call before the first compile."""
    folder = Path(folder)
    inductor = folder / INDUCTOR_DIR
    inductor.mkdir(parents=True, exist_ok=True)
    import torch
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # torch writes its default (the temp dir) into the environment at its first cache use: that is no user's choice
    if current is None or current in _ours or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = current = str(inductor)
        _ours.add(current)
    out = {"dir": current}
    # On by default in torch 2.13; set here so an older default or a stray env var cannot turn reuse off silently.
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    blob = folder / ARTIFACTS
    if blob.is_file() and folder.resolve() not in _loaded:
        try:
            torch.compiler.load_cache_artifacts(blob.read_bytes())
            _loaded.add(folder.resolve())
            out["artifacts"] = f"loaded {blob.stat().st_size} bytes"
        except Exception as exc:  # noqa: BLE001 - a bad blob only costs a recompile
            log.warning("compile cache %s not used: %s", blob, exc)
            out["artifacts"] = f"ignored ({type(exc).__name__})"
    return out


def save(folder: Path) -> int:
    """Write what this process compiled (or loaded) as one blob; returns its size (0: nothing to save)."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return 0
    data = saved[0]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (ARTIFACTS + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, folder / ARTIFACTS)  # atomic: a crash mid-write leaves the previous blob
    return len(data)
