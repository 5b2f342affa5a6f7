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
    ANNOTATOR_FILES,
    ANNOTATOR_MANIFEST,
    ANNOTATOR_REPO,
    BASE_COMPONENTS,
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
                record = {
                    "file": str(self.desc or ""),
                    "done_bytes": int(self.n),
                    "total_bytes": int(self.total or 0),
                    "updated": now,
                }
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


def _write_progress(root: Path, record: dict[str, Any]) -> None:
    path = Path(root) / PROGRESS_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**record, "updated": time.time()}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # progress reporting must never break the download


def pull_from_folder(
    source: Path,
    root: Path,
    *,
    with_fft: bool = False,
    echo: Callable[[str], None] = print,
    limit_rate: float = 0.0,
    chunk: int = 1 << 20,
) -> ModelLayout:
    """`models pull --from DIR`: copy the same files from another model folder (a USB disk, a network share, a
    machine that has them), resumable like a hub pull (an interrupted file continues from its `.partial` part)
    and with the same progress file. `limit_rate` caps bytes per second (0: no cap)."""
    src, layout = ModelLayout(Path(source)), ModelLayout(Path(root))
    files: list[tuple[Path, Path]] = []
    if src.base.is_dir():
        files += [
            (f, layout.base / f.relative_to(src.base))
            for f in sorted(src.base.rglob("*"))
            if f.is_file() and (f.parent == src.base or f.relative_to(src.base).parts[0] in BASE_COMPONENTS)
        ]
    files += [(src.lora(name), layout.lora(name)) for name in LORA_FILES]
    if with_fft:
        files.append((src.fft, layout.fft))
    absent = [str(s) for s, _ in files if not s.is_file()]
    if absent or not src.has_base():
        raise RuntimeError(f"{source} is not a complete model folder (missing: {', '.join(absent) or src.base})")
    total = sum(s.stat().st_size for s, _ in files)
    done = 0
    echo(f"Copying {len(files)} files ({total / 1e9:.2f} GB) from {source}")
    started = time.monotonic()
    for source_file, target in files:
        size = source_file.stat().st_size
        if target.is_file() and target.stat().st_size == size:
            done += size
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        have = partial.stat().st_size if partial.is_file() else 0
        have = have if have <= size else 0
        done += have
        with open(source_file, "rb") as fin, open(partial, "ab" if have else "wb") as fout:
            fin.seek(have)
            while True:
                block = fin.read(chunk)
                if not block:
                    break
                fout.write(block)
                done += len(block)
                _write_progress(layout.root, {"file": target.name, "done_bytes": done, "total_bytes": total})
                if limit_rate > 0:
                    ahead = done / limit_rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        os.replace(partial, target)
    _write_progress(layout.root, {"file": "", "done_bytes": done, "total_bytes": total})
    for name in ("TINY_MODEL.json",):  # the demo model's marker travels with it
        if (src.root / name).is_file():
            (layout.root / name).write_bytes((src.root / name).read_bytes())
    return layout


# ----------------------------------------------------------------------------------------------------------------
# The contour/depth annotators (converted by bridge_server/engine/annotators/convert.py; see models/layout.py)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_annotators(root: Path) -> dict[str, Any]:
    """Check every annotator file against `annotators.json` (size, then SHA-256); a file that does not match is
    deleted and RuntimeError says which. Returns the manifest."""
    layout = ModelLayout(Path(root))
    manifest_path = layout.annotators / ANNOTATOR_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{manifest_path}: no readable annotator manifest ({exc})") from exc
    for kind, name in ANNOTATOR_FILES.items():
        entry = manifest.get(kind) if isinstance(manifest, dict) else None
        if not isinstance(entry, dict) or entry.get("file") != name:
            raise RuntimeError(f"{manifest_path}: no entry for the {kind} annotator ({name})")
        path = layout.annotator(kind)
        size = path.stat().st_size if path.is_file() else -1
        problem = None
        if size != entry.get("bytes"):
            problem = f"is {size} bytes, the manifest says {entry.get('bytes')}"
        elif _sha256(path) != entry.get("sha256"):
            problem = "has another SHA-256 than the manifest"
        if problem:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"{path} {problem}; removed it, run `ace-bridge models pull --annotators` again")
    return manifest


def _hub_download(repo: str, filename: str, folder: Path, token: str | None) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo, filename, local_dir=folder, token=token, tqdm_class=progress_bar_class(folder.parent))


def pull_annotators(
    root: Path,
    *,
    repo: str | None = None,
    source: Path | None = None,
    token: str | None = None,
    echo: Callable[[str], None] = print,
    download: Callable[[str, str, Path, str | None], None] = _hub_download,
) -> ModelLayout:
    """`models pull --annotators`: the converted contour/depth files and their manifest, from the hub repository
    (`repo`, else ACE_BRIDGE_ANNOTATOR_REPO, else layout.ANNOTATOR_REPO) or from another model folder (`source`),
    each checked against the manifest's size and SHA-256."""
    layout = ModelLayout(Path(root))
    layout.annotators.mkdir(parents=True, exist_ok=True)
    names = [ANNOTATOR_MANIFEST, *ANNOTATOR_FILES.values()]
    if source is not None:
        src = ModelLayout(Path(source)).annotators
        absent = [n for n in names if not (src / n).is_file()]
        if absent:
            raise RuntimeError(f"{src} lacks {', '.join(absent)}")
        for name in names:
            echo(f"Copying {src / name} -> {layout.annotators / name}")
            partial = layout.annotators / (name + ".partial")
            partial.write_bytes((src / name).read_bytes())
            os.replace(partial, layout.annotators / name)
    else:
        repo = repo or os.environ.get("ACE_BRIDGE_ANNOTATOR_REPO") or ANNOTATOR_REPO
        for name in names:
            echo(f"Downloading {repo}/{name} -> {layout.annotators / name}")
            download(repo, name, layout.annotators, token)
    check_annotators(layout.root)
    return layout


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
                snapshot_download(repo, allow_patterns=patterns, local_dir=layout.base, token=token, tqdm_class=bar)
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
