"""ACE++ as the daemon's `Engine` (base.py): plan the job, have the model manager load and place the weights, run
the pure pipeline, crop back. Three parts, each in its own module:

    pipeline.py           inputs -> tensors -> image (the denoising loop, previews, decode); no lifecycle
    manager.py            load, unload, memory modes, optimisations, adapters, text encoding placement
    diffusers_adapter.py  every private diffusers call, with the diffusers versions it was checked on

This module adds only what the Engine protocol asks: which tasks the installed files allow, the state the panel
and `ace-bridge status` show, the idle-unload timer and warm-up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ace_protocol.errors import ErrorCode
from ace_protocol.tasks import STEPS, TASKS

from bridge_server.engine import pipeline, recipes
from bridge_server.engine.annotators.runner import AnnotatorRunner
from bridge_server.engine.base import EngineError, EngineJob, EngineResult, JobCancelled, PreviewCallback, StepCallback
from bridge_server.engine.manager import MEMORY_MODES, ModelManager, is_oom, vram
from bridge_server.models.layout import ModelLayout
from bridge_server.models.pull import read_download_progress

__all__ = ["ALL_TASKS", "MEMORY_MODES", "TASK_NEEDS", "AcePlusEngine"]


def _task_default(task: str, name: str, fallback: Any) -> Any:
    """A parameter's default from the task table (e.g. guidance 50 for ACE++ tasks, 30 for plain Fill)."""
    spec = TASKS.get(task)
    param = spec.param(name) if spec is not None else None
    return fallback if param is None else param.default


ALL_TASKS = tuple(TASKS)  # every task of the table has a recipe (recipes.RECIPES)
TASK_NEEDS = {name: spec.model_piece for name, spec in TASKS.items()}  # pieces besides the base model
PULL_HINT = "run `ace-bridge models pull` (add --fft for instruct), or point `serve --model` at a model folder"


class AcePlusEngine:
    """The Engine protocol on ACE++ (see bridge_server/engine/base.py). One thread calls `run`."""

    name = "ace_plus"

    def __init__(
        self,
        model_root: Path,
        *,
        device: str = "auto",
        dtype: Any = None,
        memory_mode: str = "auto",
        idle_unload_s: float | None = 600,
        max_tokens_limit: int = 16384,
        t5_max_length: int = 512,
        optimizations: dict[str, Any] | None = None,
        quantize: str | None = None,
        preview_every: int = 4,
        tier: str = "auto",
        compile_cache: Path | None = None,
    ) -> None:
        self.layout = ModelLayout(Path(model_root))
        self.manager = ModelManager(
            self.layout,
            device=device,
            dtype=dtype,
            memory_mode=memory_mode,
            t5_max_length=t5_max_length,
            optimizations=optimizations,
            quantize=quantize,
            preview_every=preview_every,
            tier=tier,
            compile_cache=compile_cache,
        )
        self.idle_unload_s = idle_unload_s
        self.max_tokens_limit = max_tokens_limit
        # The contour/depth structure modes' networks, on the device the engine picks (loaded on first use).
        self.annotators = AnnotatorRunner(self.layout.root, device=self.manager.resolve_device)
        self.t5_max_length = t5_max_length
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._last_used = time.monotonic()

    # What the manager holds, under the names the engine tests look at.
    @property
    def _pipe(self) -> Any:
        return self.manager.pipe

    @property
    def _fft(self) -> Any:
        return self.manager.fft

    @property
    def _memory_mode(self) -> str | None:
        return self.manager.memory_mode

    @_memory_mode.setter
    def _memory_mode(self, mode: str | None) -> None:
        self.manager.memory_mode = mode

    def _resolve_memory_mode(self, device: str) -> str:
        return self.manager.resolve_memory_mode(device)

    @property
    def quantize(self) -> str | None:
        return self.manager.quantize

    @property
    def preview_every(self) -> int:
        return self.manager.preview_every

    @preview_every.setter
    def preview_every(self, every: int) -> None:
        self.manager.preview_every = max(0, int(every))

    # ------------------------------------------------------------------------------------------------------------
    # What is installed

    def _installed(self, piece: str | None) -> bool:
        if piece is None:
            return True
        if piece == "fft":
            return self.layout.has_fft()
        return self.layout.lora(piece).is_file()

    def set_memory_mode(self, mode: str) -> None:
        """Change the memory mode; the model is unloaded now and loads in the new mode at the next job."""
        with self._lock:
            self.manager.set_memory_mode(mode)
        self.unload()

    def set_tier(self, name: str) -> None:
        """Override the memory tier ("auto": chosen at load); the model is unloaded now and loads on that tier at the
        next job. An unknown name raises ValueError and changes nothing."""
        with self._lock:
            self.manager.set_tier(name)
        self.unload()

    def available_tasks(self) -> list[str]:
        if not self.layout.has_base():
            return []
        return [t for t in ALL_TASKS if self._installed(TASK_NEEDS[t])]

    def _missing_message(self, task: str) -> str:
        if not self.layout.has_base():
            return f"the base model is not installed at {self.layout.base}; {PULL_HINT}"
        piece = TASK_NEEDS[task]
        path = self.layout.fft if piece == "fft" else self.layout.lora(piece)
        what = "the ACE++ FFT model (23.8 GB)" if piece == "fft" else f"the ACE++ {piece} LoRA"
        pull = "`ace-bridge models pull --fft`" if piece == "fft" else "`ace-bridge models pull`"
        return f"task '{task}' needs {what} at {path}; run {pull}"

    def state(self) -> dict[str, Any]:
        m = self.manager
        state = m.state
        download = None
        if state in ("unloaded", "missing") and not self.layout.has_base():
            download = read_download_progress(self.layout.root)
            state = "downloading" if download else "missing"
        out: dict[str, Any] = {
            "state": state,
            "model": str(self.layout.root),
            "tiny": (self.layout.root / "TINY_MODEL.json").is_file(),
            "adapters": list(m.adapters),
            "fft": self.layout.has_fft(),
            "fft_loaded": m.fft is not None,
            "device": m.device,
            "memory_mode": m.memory_mode or m.memory_request,
            "memory_mode_requested": m.memory_request,
            "vram": vram(),
            "tasks": self.available_tasks(),
            "load": m.progress.as_state(state),
        }
        out |= m.tier_state()
        problems = m.preflight()  # e.g. a full-size model and no GPU: say so before the first job fails
        if problems:
            out["warnings"] = problems
            out["state"] = "error"
            out.setdefault("error", problems[0].split(": ", 1)[-1])
            out.setdefault("error_kind", problems[0].split(": ", 1)[0])
        if m.optimized:
            out["optimizations"] = dict(m.optimized)
        if m.error_kind:
            out["error_kind"] = m.error_kind
        if download:
            out["download"] = download
        if m.error:
            out["error"] = m.error
        return out

    # ------------------------------------------------------------------------------------------------------------
    # Running

    def run(
        self,
        job: EngineJob,
        on_step: StepCallback,
        is_cancelled: Callable[[], bool],
        *,
        on_preview: PreviewCallback | None = None,
    ) -> EngineResult:
        with self._lock:
            self._cancel_timer()
            try:
                return self._run(job, on_step, is_cancelled, on_preview)
            finally:
                self._last_used = time.monotonic()
                self._schedule_idle_unload()

    def _run(
        self,
        job: EngineJob,
        on_step: StepCallback,
        is_cancelled: Callable[[], bool],
        on_preview: PreviewCallback | None = None,
    ) -> EngineResult:
        if job.task in TASK_NEEDS and (not self.layout.has_base() or not self._installed(TASK_NEEDS[job.task])):
            raise EngineError(ErrorCode.MODEL_MISSING, self._missing_message(job.task))
        plan = recipes.plan_for_job(job, max_tokens_limit=self.max_tokens_limit, annotate=self.annotators)
        if is_cancelled():
            raise JobCancelled()
        self.manager.ensure_loaded(PULL_HINT)
        params = job.params or {}
        seed = int(job.seed) if job.seed is not None and int(job.seed) >= 0 else random.randint(0, 2**32 - 1)
        steps = int(params.get("steps", _task_default(job.task, "steps", STEPS.default)))
        guidance = float(params.get("guidance", _task_default(job.task, "guidance", 50.0)))
        if plan.adapter is not None and plan.adapter not in self.manager.adapters:
            raise EngineError(ErrorCode.MODEL_MISSING, self._missing_message(job.task))
        try:
            with self.manager.components(plan) as components:
                model_rgb = pipeline.generate(
                    components,
                    plan,
                    seed=seed,
                    steps=steps,
                    guidance=guidance,
                    on_step=on_step,
                    is_cancelled=is_cancelled,
                    on_preview=on_preview,
                )
        except (JobCancelled, EngineError):
            raise
        except Exception as exc:
            if is_oom(exc):
                raise self.manager.on_oom() from exc
            raise
        info = plan.info() | {
            "seed": seed,
            "steps": steps,
            "guidance": guidance,
            "t5_max_length": self.t5_max_length,
            "model": str(self.layout.root),
            "memory_mode": self.manager.memory_mode,
        }
        return EngineResult(rgb=plan.postprocess(model_rgb), info=info)

    # ------------------------------------------------------------------------------------------------------------
    # Unloading

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule_idle_unload(self) -> None:
        if self.idle_unload_s is None or self.manager.pipe is None:
            return
        self._timer = threading.Timer(self.idle_unload_s, self.idle_check)
        self._timer.daemon = True
        self._timer.start()

    def idle_check(self) -> bool:
        """Unload when idle for `idle_unload_s` (called by the timer; the daemon may also call it). True if unloaded."""
        if self.idle_unload_s is None:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # a job is running
        try:
            if self.manager.pipe is not None and time.monotonic() - self._last_used >= self.idle_unload_s:
                self.manager.release()
                self.manager.state = "unloaded"
                return True
            return False
        finally:
            self._lock.release()

    def warm_up(self, sizes: tuple[tuple[int, int], ...] = ((1440, 720), (1024, 1024))) -> dict[str, float]:
        """Load the model now and do the one-time work (torch.compile, the first CUDA kernels) at each canvas size
        at start-up instead of inside the first artist's job. Returns seconds per size.

        Two sizes are enough: with `compile_dynamic` None, the second size makes torch.compile switch to dynamic
        shapes, which then serve every other size without recompiling. With a compiled transformer resident on
        one device, the compiling runs in the background (background_compile.py): call this from its own thread
        and jobs run uncompiled meanwhile; otherwise one step per size runs under the engine lock and jobs wait.
        The engine state says "warming up" until it is done."""
        timings: dict[str, float] = {}
        with self._lock:
            self.manager.ensure_loaded(PULL_HINT)
            self.manager.state = "warming up"
            gate = self.manager.compile_gate()
            if gate is None:
                try:
                    for i, (width, height) in enumerate(sizes):
                        self.manager.progress.warming(f"warming up at {width}x{height}", i + 1, len(sizes))
                        started = time.monotonic()
                        job = EngineJob(
                            task="generate",
                            prompt="warm-up",
                            seed=0,
                            params={"steps": 1, "width": width, "height": height},
                        )
                        self._run(job, lambda *_: None, lambda: False, None)
                        timings[f"{width}x{height}"] = round(time.monotonic() - started, 3)
                finally:
                    self._warm_up_done()
        if gate is not None:
            timings = self._compile_in_background(gate, sizes)
        self._save_compile_cache()
        logging.getLogger(__name__).info("warm-up done: %s", timings)
        return timings

    def _compile_in_background(self, gate: Any, sizes: tuple[tuple[int, int], ...]) -> dict[str, float]:
        """Outside the engine lock: compile each size through the gate while jobs take the eager path."""
        import torch

        from bridge_server.engine.background_compile import transformer_inputs

        m = self.manager
        transformer, device, dtype = m.pipe.transformer, m.execution_device(), m.dtype
        timings: dict[str, float] = {}
        try:
            for i, (width, height) in enumerate(sizes):
                m.progress.warming(f"compiling for {width}x{height}", i + 1, len(sizes))
                started = time.monotonic()
                inputs = transformer_inputs(transformer, width, height, self.t5_max_length, device, dtype)
                with gate.compiling(), torch.no_grad():
                    transformer(**inputs)
                timings[f"{width}x{height}"] = round(time.monotonic() - started, 3)
        except Exception as exc:  # noqa: BLE001 - jobs still run; they compile as they come, as without warm-up
            logging.getLogger(__name__).warning("background compile stopped: %s: %s", type(exc).__name__, exc)
        finally:
            gate.open()
            with self._lock:
                self._warm_up_done()
        return timings

    def _warm_up_done(self) -> None:
        self.manager.progress.finish()
        if self.manager.pipe is not None and self.manager.state == "warming up":
            self.manager.state = "loaded"

    def _save_compile_cache(self) -> None:
        """After a warm-up compiled: keep the artifacts for the next start (compile_cache.py)."""
        folder = self.manager.compile_cache
        if folder is None or not (self.manager.optimizations or {}).get("compile"):
            return
        from bridge_server.engine import compile_cache

        try:
            size = compile_cache.save(folder)
        except Exception as exc:  # noqa: BLE001 - a cache that cannot be written only costs the next start time
            logging.getLogger(__name__).warning("compile cache not saved: %s", exc)
            return
        logging.getLogger(__name__).info("compile cache: %d bytes saved in %s", size, folder)

    def unload(self) -> None:
        with self._lock:
            self._cancel_timer()
            self.manager.release()
            self.annotators.release()
            self.manager.state = "unloaded"

    def close(self) -> None:
        self.unload()
