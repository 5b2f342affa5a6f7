"""`models pull`: download what is missing from the hub, with the licence notice first and progress that the
daemon can read from another process."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge_server.models.layout import (
    ACE_REPO,
    BASE_PATTERNS,
    BASE_REPO,
    DOWNLOAD_GB_WITH_FFT,
    DOWNLOAD_GB_WITHOUT_FFT,
    FFT_FILE,
    LICENCE_NOTICE,
    LORA_FILES,
    ModelLayout,
)

PROGRESS_FILE = ".download-progress.json"
#: A progress file older than this belongs to a pull that is no longer running.
PROGRESS_STALE_S = 60.0


def read_download_progress(root: Path) -> dict[str, Any] | None:
    """What a running `ace-bridge models pull` last wrote into `root`, or None (no pull, or a stale one)."""
    try:
        data = json.loads((Path(root) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or time.time() - float(data.get("updated", 0)) > PROGRESS_STALE_S:
        return None
    return data


def progress_bar_class(root: Path):
    """A tqdm class for huggingface_hub that also writes its position to `root`/.download-progress.json (at most
    twice a second), so the daemon and its control panel can show a pull that runs in another process."""
    from tqdm.auto import tqdm

    path = Path(root) / PROGRESS_FILE

    class ProgressToFile(tqdm):  # type: ignore[misc,valid-type]
        _last_write = 0.0

        def update(self, n=1):  # noqa: ANN001 - tqdm's signature
            result = super().update(n)
            now = time.time()
            if now - ProgressToFile._last_write >= 0.5 or (self.total and self.n >= self.total):
                ProgressToFile._last_write = now
                record = {"file": str(self.desc or ""), "done_bytes": int(self.n), "total_bytes": int(self.total or 0),
                          "updated": now}
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(path.name + ".tmp")
                    tmp.write_text(json.dumps(record), encoding="utf-8")
                    os.replace(tmp, path)
                except OSError:
                    pass  # progress reporting must never break the download
            return result

    return ProgressToFile


class ConfirmationRequired(Exception):
    """Raised by `pull` without `confirm=True`; its message is the notice the user must read first."""


def pull_notice(with_fft: bool) -> str:
    size = DOWNLOAD_GB_WITH_FFT if with_fft else DOWNLOAD_GB_WITHOUT_FFT
    return (
        f"This downloads about {size} GB ({BASE_REPO} + the ACE++ LoRAs"
        + (" + the 23.8 GB FFT model" if with_fft else "")
        + f").\n{LICENCE_NOTICE}"
    )


def pull_plan(with_fft: bool) -> list[tuple[str, list[str] | None, str | None]]:
    """(repo, allow_patterns, single filename) in download order; pure, so it is tested without the network."""
    plan: list[tuple[str, list[str] | None, str | None]] = [(BASE_REPO, BASE_PATTERNS, None)]
    plan += [(ACE_REPO, None, rel) for rel in LORA_FILES.values()]
    if with_fft:
        plan.append((ACE_REPO, None, FFT_FILE))
    return plan


def pull(
    root: Path,
    *,
    with_fft: bool = False,
    confirm: bool = False,
    echo: Callable[[str], None] = print,
    token: str | None = None,
) -> ModelLayout:
    """`ace-bridge models pull [--fft] --yes`: download into the layout, resumable, with tqdm progress.

    Honours HF_HOME / HF_TOKEN / HF_HUB_OFFLINE through huggingface_hub. Files land directly in `root` (local_dir),
    so an interrupted download resumes from the partial file on the next call.
    """
    if not confirm:
        raise ConfirmationRequired(pull_notice(with_fft) + "\nRun again with the confirmation flag (--yes).")
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    layout = ModelLayout(Path(root))
    bar = progress_bar_class(layout.root)
    echo(pull_notice(with_fft))
    try:
        for repo, patterns, filename in pull_plan(with_fft):
            if filename is None:
                echo(f"Downloading {repo} -> {layout.base}")
                snapshot_download(repo, allow_patterns=patterns, local_dir=layout.base, token=token,
                                  tqdm_class=bar)
            else:
                echo(f"Downloading {repo}/{filename} -> {layout.ace / filename}")
                hf_hub_download(repo, filename, local_dir=layout.ace, token=token, tqdm_class=bar)
    except GatedRepoError as exc:
        raise RuntimeError(
            f"{BASE_REPO} is gated: accept its licence on huggingface.co and set HF_TOKEN ({exc.__class__.__name__})"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise RuntimeError(f"repository not found or not authorised: {exc}") from exc
    return layout
