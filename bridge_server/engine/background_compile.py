"""Compile in the background while jobs already run uncompiled.

`serve --compile` used to warm up before the first job: on a fresh cache that is minutes (an fp8 compile took 290 s),
and the first painter waited for all of it. Now the warm-up thread compiles the transformer's blocks by calling the
transformer itself with inputs of each warm-up size (no pipeline, no scheduler, no adapter switch, so nothing a job
uses is touched), while jobs on the engine thread take the eager path of the very same modules. A `CompileGate`
decides per call: the compiled function for the warm-up thread, the eager one for everybody else, until every size is
compiled; then the gate opens and every call is compiled.

torch.compile (`Module.compile`, which diffusers' `compile_repeated_blocks` uses) stores the compiled callable in
`module._compiled_call_impl`, and `Module.__call__` uses it when set; the gate swaps in a small dispatcher there and
puts the real callable back when it opens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .diffusers_adapter import compiled_call, eager_call, set_compiled_call


class CompileGate:
    """Eager for everyone but the warm-up thread until `open()`."""

    def __init__(self, model: Any) -> None:
        self._local = threading.local()
        self._compiled: dict[Any, Callable[..., Any]] = {}
        self.opened = False
        for module in model.modules():
            compiled = compiled_call(module)
            if compiled is not None:
                self._compiled[module] = compiled
                set_compiled_call(module, self._dispatcher(module, compiled))

    @property
    def modules(self) -> int:
        return len(self._compiled)

    def _dispatcher(self, module: Any, compiled: Callable[..., Any]) -> Callable[..., Any]:
        local = self._local

        def call(*args: Any, **kwargs: Any) -> Any:
            if getattr(local, "compiling", False):
                return compiled(*args, **kwargs)
            return eager_call(module, *args, **kwargs)  # eager: the job does not wait for the compiler

        return call

    @contextmanager
    def compiling(self) -> Iterator[None]:
        """Calls from this thread take the compiled path (and compile on first use)."""
        self._local.compiling = True
        try:
            yield
        finally:
            self._local.compiling = False

    def open(self) -> None:
        """Every call compiled from now on: the real compiled callables go back in place."""
        for module, compiled in self._compiled.items():
            set_compiled_call(module, compiled)
        self.opened = True


def transformer_inputs(transformer: Any, width: int, height: int, text_len: int, device: Any, dtype: Any) -> dict:
    """The keyword arguments pipeline.py passes the Fill/FFT transformer for a `width` x `height` canvas, with
    zeros: same shapes and dtypes, so the compiled graphs are the ones a job of that size needs."""
    import torch

    cfg = transformer.config
    tokens = (height // 16) * (width // 16)
    out = {
        "hidden_states": torch.zeros(1, tokens, cfg.in_channels, device=device, dtype=dtype),
        "timestep": torch.ones(1, device=device, dtype=dtype),
        "pooled_projections": torch.zeros(1, cfg.pooled_projection_dim, device=device, dtype=dtype),
        "encoder_hidden_states": torch.zeros(1, text_len, cfg.joint_attention_dim, device=device, dtype=dtype),
        "txt_ids": torch.zeros(text_len, 3, device=device, dtype=dtype),
        "img_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
        "return_dict": False,
    }
    out["guidance"] = torch.full((1,), 3.5, device=device, dtype=torch.float32) if cfg.guidance_embeds else None
    return out
