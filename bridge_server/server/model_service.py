"""The editors' first-run box, daemon side: `model_status`, `model_pull` and `model_pull_cancel` (protocol
messages) answered with `model_state`.

A pull runs `ace-bridge models pull --yes` as a child process (the same command a user types; it resumes partial
files and writes `.download-progress.json`, which is read here for the progress). Cancel terminates it; the files
fetched so far stay, so the next pull resumes. Only the daemon's own token may start or stop a download (not a
named token given to someone else). The engine sees the new files by itself: its task list reads the layout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ace_protocol.errors import ErrorCode, ProtocolError, bad_request
from ace_protocol.messages import Message, ModelPull, ModelPullCancel, ModelState, ModelStatusRequest

from bridge_server.models.layout import (
    DOWNLOAD_GB_WITH_FFT,
    DOWNLOAD_GB_WITHOUT_FFT,
    LICENCE_NOTICE,
    ModelLayout,
)
from bridge_server.models.pull import read_download_progress

log = logging.getLogger(__name__)
PULL_LOG = ".pull.log"
MODEL_MESSAGES = (ModelStatusRequest, ModelPull, ModelPullCancel)


class ModelService:
    """One per app: the pull child process and what it last did."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.last: dict[str, Any] = {"state": "idle"}
        self.cancelling = False
        self._gpu: dict[str, Any] | None = None

    # ------------------------------------------------------------------ answers

    async def handle(self, state: Any, person: str | None, message: Message) -> ModelState:
        if isinstance(message, ModelPull):
            if person != "":
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "only the daemon's own token may download models")
            await self.start(state, fft=message.fft, confirm=message.confirm)
        elif isinstance(message, ModelPullCancel):
            if person != "":
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "only the daemon's own token may stop a download")
            await self.cancel()
        reply = await asyncio.to_thread(self.describe, state, person)
        reply.id = getattr(message, "id", None)
        return reply

    def describe(self, state: Any, person: str | None = "") -> ModelState:
        layout = _layout(state)
        engine = state.engine_state()
        tasks = [t for t in engine.get("tasks") or state.available_tasks() if isinstance(t, str)]
        pull = dict(self.last)
        if self.running():
            pull["state"] = "running"
            if layout is not None:
                progress = read_download_progress(layout.root) or {}
                pull.update({k: progress[k] for k in ("file", "done_bytes", "total_bytes") if k in progress})
        missing: list[dict[str, Any]] = []
        download_bytes = 0
        installed = bool(tasks)
        if layout is not None:
            installed = layout.has_base()
            for item in layout.missing():
                missing.append({"name": item, "required": "optional" not in item, "bytes": 0})
            if not layout.has_base():
                download_bytes = DOWNLOAD_GB_WITHOUT_FFT * 10**9
                missing[0]["bytes"] = download_bytes
        return ModelState(
            installed=installed,
            tiny=bool(engine.get("tiny")),
            missing=missing,
            download_bytes=download_bytes,
            licence=(
                f"{LICENCE_NOTICE} With the optional FFT model (for Edit with Instruction) the download is "
                f"about {DOWNLOAD_GB_WITH_FFT} GB."
            )
            if missing
            else "",
            can_pull=layout is not None and person == "",
            pull=pull,
            gpu=self.gpu(engine),
            tasks=tasks,
            load=dict(engine.get("load") or {}),  # loading into memory: the editors show it as progress
        )

    def gpu(self, engine: dict[str, Any]) -> dict[str, Any]:
        vram = engine.get("vram")
        if isinstance(vram, dict) and vram.get("total_gib"):
            return {"usable": True, "total_gib": vram["total_gib"]}
        if self._gpu is None:
            try:
                import torch

                usable = bool(torch.cuda.is_available())
                name = torch.cuda.get_device_name(0) if usable else ""
            except Exception as exc:  # noqa: BLE001 - a broken CUDA install is "no usable GPU"
                usable, name = False, f"{type(exc).__name__}: {exc}"
            self._gpu = {
                "usable": usable,
                "name": name,
                "message": "" if usable else "no CUDA GPU is visible to the daemon",
            }
        return dict(self._gpu)

    # ------------------------------------------------------------------ the pull

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, state: Any, *, fft: bool, confirm: bool) -> None:
        layout = _layout(state)
        if layout is None:
            raise bad_request("this daemon's engines run elsewhere; download the model where they run")
        if not confirm:
            raise bad_request("confirm the download size and licence first (model_pull with confirm: true)")
        if self.running():
            return
        layout.root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "bridge_server.cli", "models", "pull", "--yes", "--root", str(layout.root)]
        if fft:
            argv.append("--fft")
        log_path = layout.root / PULL_LOG
        with open(log_path, "ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=os.name == "posix",
            )
        self.cancelling = False
        self.last = {"state": "running", "done_bytes": 0, "total_bytes": 0, "file": ""}
        log.info("model download started (pid %s): %s", self.process.pid, " ".join(argv[3:]))
        self.watcher = asyncio.get_running_loop().create_task(self._watch(self.process, log_path))

    async def _watch(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        code = await process.wait()
        if code == 0:
            self.last = {"state": "done"}
        elif self.cancelling:
            self.last = {"state": "cancelled", "message": "stopped; the next download resumes"}
        else:
            tail = _tail(log_path)
            self.last = {"state": "failed", "message": tail or f"exit code {code}"}
        log.info("model download ended: %s", self.last["state"])

    async def cancel(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        self.cancelling = True
        try:
            process.send_signal(signal.SIGTERM if os.name == "posix" else signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
        if self.watcher is not None:
            await asyncio.shield(self.watcher)

    async def close(self) -> None:
        await self.cancel()


def _layout(state: Any) -> ModelLayout | None:
    layout = getattr(state.engine, "layout", None)
    return layout if isinstance(layout, ModelLayout) else None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [line for line in text.splitlines() if line.strip() and "%|" not in line]
    return "\n".join(keep[-lines:])[-1500:]
