"""`ace-bridge edit`: one job from files, with a progress bar; or `--dry-run` to see the recipe without a model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ace_protocol.images import ImagePayload
from ace_protocol.tasks import CONTROL, TASKS, ParamSpec, param_help
from PIL import Image

from bridge_server.cli.common import (
    EXIT_CANCELLED,
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Subparsers,
    connection_args,
)


class UsageError(Exception):
    pass


def _load(path: str, what: str, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {what} '{path}': {exc}") from None


def table_params() -> dict[str, ParamSpec]:
    """Every parameter of the task table by name, in table order (the first task's spec where tasks share one)."""
    found: dict[str, ParamSpec] = {}
    for task in TASKS.values():
        for spec in task.params:
            found.setdefault(spec.name, spec)
    return found


def add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per task parameter, its type, choices and help from the task table. A flag not given leaves the
    parameter out of the job, so the daemon's default applies (e.g. the control panel's default steps)."""
    group = parser.add_argument_group("task parameters (from the task table; not given: the daemon's default)")
    for name, spec in table_params().items():
        flag = "--" + name.replace("_", "-")
        help_text = param_help(name).replace("%", "%%")
        if spec.kind == "bool":  # a switch that says the opposite of the default
            flag = flag if not spec.default else "--no-" + name.replace("_", "-")
            help_text = help_text if not spec.default else "turns this off: " + help_text
            group.add_argument(
                flag, dest=name, action="store_const", const=not spec.default, default=None, help=help_text
            )
        elif spec.kind == "enum":
            group.add_argument(flag, dest=name, choices=spec.choices, default=None, help=help_text)
        else:
            group.add_argument(
                flag, dest=name, type={"int": int, "float": float}.get(spec.kind, str), default=None, help=help_text
            )


def collect_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in table_params():
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    for item in args.param:
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--param needs NAME=VALUE, got '{item}'")
        try:
            params[name] = json.loads(raw)
        except ValueError:
            params[name] = raw
    return params


def run_edit(args: argparse.Namespace) -> int:
    try:
        spec = TASKS.get(args.task)
        if spec is None:
            raise UsageError(f"unknown task '{args.task}'; tasks: {', '.join(TASKS)}")
        image = _load(args.image, "image", "RGBA") if args.image else None
        mask = _load(args.mask, "mask", "L") if args.mask else None
        refs = [_load(r, "reference", "RGBA") for r in args.ref]
        if spec.reference_kind == CONTROL:
            # A control image travels as the task's one reference (the task table's reference_kind says so).
            if refs:
                raise UsageError(f"task '{spec.name}' takes a control image: give it with --control, not --ref")
            refs = [_load(args.control, "control image", "RGBA")] if args.control else []
        elif args.control:
            raise UsageError(
                f"task '{spec.name}' takes no control image; tasks that do: "
                + ", ".join(t.name for t in TASKS.values() if t.reference_kind == CONTROL)
            )
        if mask is not None and image is not None and mask.shape != image.shape[:2]:
            raise UsageError(
                f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
            )
        if mask is not None and not mask.any():
            raise UsageError(
                f"the mask '{args.mask}' is all black, so nothing would change: paint white where the "
                "picture should change"
            )
        if spec.needs_image and image is None:
            raise UsageError(f"task '{spec.name}' needs an image: give it with --image")
        if args.expand:
            image, mask = _expand(spec, args.expand, image, mask)
        params = collect_params(args)
        _check_params(spec, params)
        if args.dry_run:
            _check_writable(args.dry_run, "the dry-run folder", folder=True)
            return _dry_run(args, spec.name, image, mask, refs, params)
        if not args.output:
            raise UsageError("give -o OUT.png (or --dry-run DIR)")
        _check_writable(args.output, "the output")
    except UsageError as exc:
        print(f"ace-bridge edit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _submit(args, spec.name, image, mask, refs, params)


def _check_params(spec, params: dict[str, Any]) -> None:
    """The task table's own check, here, so a mistake is one line before any job is sent."""
    from ace_protocol.errors import ProtocolError

    try:
        spec.validate_params(params)
    except ProtocolError as exc:
        raise UsageError(exc.message) from None


def _check_writable(path: str, what: str, *, folder: bool = False) -> None:
    """Refuse an output that cannot be written (a folder where a file goes, a file in the way of a folder, no
    permission) before the job runs, not after."""
    import os

    target = Path(path).absolute()
    if not folder and target.is_dir():
        raise UsageError(f"{what} '{path}' is a folder; give a file name such as {Path(path) / 'out.png'}")
    if folder and target.exists() and not target.is_dir():
        raise UsageError(f"{what} '{path}' is a file, not a folder")
    existing = target if folder and target.is_dir() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write {what} '{path}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or (target.is_file() and not os.access(target, os.W_OK)):
        raise UsageError(f"cannot write {what} '{path}': permission denied")
    if not folder:
        _check_image_type(path, what)
    _try_writing(target if folder else target.parent, path, what)


def _check_image_type(path: str, what: str) -> None:
    """The result is saved in the format its file name says: one the imaging library cannot write is refused now,
    not after the job ran."""
    suffix = Path(path).suffix.lower()
    known = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if suffix not in known:
        raise UsageError(
            f"cannot write {what} '{path}': "
            + (f"'{suffix}' is not an image type it can write" if suffix else "the name has no image type")
            + "; end it in .png (or .webp, .jpg, .tif)"
        )


def _try_writing(folder: Path, path: str, what: str) -> None:
    """Create the folder (the write would) and a scratch file in it: the only test that also holds for a read-only
    file system, a full disk, or root on a folder that refuses files (os.access says yes to root)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ace-bridge-write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {what} '{path}': {exc.strerror or exc}") from None


def _expand(spec, text: str, image: np.ndarray | None, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Outpainting: the image grown by the margins (edges repeated), the new area as the mask with a feathered
    seam (ace_protocol.geometry, the same helper the plugins use), merged with the user's own mask."""
    from ace_protocol.geometry import Extent, Margins, expand_mask, expand_pixels, expanded_extent

    if not spec.can_expand:
        raise UsageError(
            f"task '{spec.name}' cannot expand; tasks that can: "
            + ", ".join(t.name for t in TASKS.values() if t.can_expand)
        )
    if image is None:
        raise UsageError("--expand grows an image: give it with --image")
    try:
        margins = Margins.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    canvas = Extent(image.shape[1], image.shape[0])
    grown = expanded_extent(canvas, margins)
    rgba = np.ascontiguousarray(image, np.uint8)
    big = np.frombuffer(expand_pixels(rgba.tobytes(), canvas, margins, 4), np.uint8).reshape(
        grown.height, grown.width, 4
    )
    new_mask = np.frombuffer(expand_mask(canvas, margins), np.uint8).reshape(grown.height, grown.width).copy()
    if mask is not None:
        x, y = margins.left, margins.top
        region = new_mask[y : y + canvas.height, x : x + canvas.width]
        np.maximum(region, mask, out=region)
    return big.copy(), new_mask


def _dry_run(args: argparse.Namespace, task: str, image, mask, refs, params: dict[str, Any]) -> int:
    from ace_protocol.errors import ProtocolError

    from bridge_server.engine.annotators.runner import AnnotatorRunner
    from bridge_server.engine.base import EngineJob
    from bridge_server.engine.recipes import plan_for_job, write_dry_run
    from bridge_server.models.layout import default_model_root

    spec = TASKS[task]
    try:
        full = spec.validate_params(params)
    except ProtocolError as exc:
        print(f"ace-bridge edit: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    seed = full["seed"] if full["seed"] >= 0 else 0
    job = EngineJob(
        task=task,
        prompt=args.prompt,
        seed=seed,
        params=full,
        image=image,
        mask=mask,
        references=refs,
        width=full.get("width", 1024),
        height=full.get("height", 1024),
    )
    try:
        # The contour/depth modes run their annotator network here too (from the model folder `serve` would use).
        plan = plan_for_job(job, annotate=AnnotatorRunner(default_model_root()))
    except ProtocolError as exc:
        print(f"ace-bridge edit: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    written = write_dry_run(Path(args.dry_run), plan)
    if args.expand and image is not None:
        plan_file = next(p for p in written if p.name == "plan.json")
        data = json.loads(plan_file.read_text(encoding="utf-8"))
        data["expand"] = {"margins": args.expand, "canvas": {"width": image.shape[1], "height": image.shape[0]}}
        plan_file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    for path in written:
        print(path)
    return EXIT_OK


def _payload(array: np.ndarray, remote: bool) -> ImagePayload:
    """Raw pixels on loopback (no encode/decode at all); PNG when the daemon is elsewhere."""
    height, width = array.shape[:2]
    if remote:
        import io

        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG", compress_level=3)
        return ImagePayload(width, height, "png", buf.getvalue())
    fmt = "gray8" if array.ndim == 2 else "rgba8"
    # A view of the array, not a copy: the frame encoder copies the pixels once, into the frame.
    return ImagePayload(width, height, fmt, memoryview(np.ascontiguousarray(array)).cast("B"))


class ProgressBar:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet or not sys.stderr.isatty()
        self.last_line = ""

    def show(self, text: str) -> None:
        if self.quiet:
            if text != self.last_line:
                print(text, file=sys.stderr, flush=True)
        else:
            print(f"\r{text:<70}", end="", file=sys.stderr, flush=True)
        self.last_line = text

    def bar(self, step: int, total: int, eta: float | None, image: int, count: int) -> None:
        filled = int(30 * step / max(total, 1))
        eta_text = f" ETA {eta:5.1f}s" if eta is not None else ""
        which = f" image {image + 1}/{count}" if count > 1 else ""
        self.show(f"[{'#' * filled}{'.' * (30 - filled)}] {step}/{total}{which}{eta_text}")

    def done(self) -> None:
        if not self.quiet:
            print(file=sys.stderr)


def _submit(args: argparse.Namespace, task: str, image, mask, refs, params: dict[str, Any]) -> int:
    from ace_protocol.client import BridgeClient, ClientError, DaemonNotRunning, JobError, Unauthorized
    from ace_protocol.messages import Cancelled, Done, Failed, Progress, Queued, Result, Started

    from bridge_server.imaging.compositing import composite_over

    client = BridgeClient(
        args.url, args.token, port=args.port, client_name="ace-bridge-cli", editor="cli", reconnect_timeout=30
    )
    remote = not any(h in client.url for h in ("127.0.0.1", "localhost", "[::1]"))
    bar = ProgressBar(args.quiet)
    try:
        client.connect()
    except Unauthorized as exc:
        print(f"ace-bridge edit: {exc}", file=sys.stderr)
        return EXIT_UNAUTHORIZED
    except ClientError as exc:
        print(f"ace-bridge edit: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    written: list[str] = []
    started = time.monotonic()
    try:
        try:
            job = client.submit(
                task,
                args.prompt,
                image=_payload(image, remote) if image is not None else None,
                mask=_payload(mask, remote) if mask is not None else None,
                references=[_payload(r, remote) for r in refs],
                params=params,
                label="ace-bridge edit",
            )
        except JobError as exc:
            print(f"ace-bridge edit: refused ({exc.code.value}): {exc}", file=sys.stderr)
            return EXIT_FAILED
        except DaemonNotRunning as exc:
            print(f"ace-bridge edit: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        bar.show(f"accepted: job {job.id[:8]}, seed {job.seed}, {job.position} ahead")
        try:
            for event in job.events():
                if isinstance(event, Queued):
                    bar.show(f"queued: {event.position} job(s) ahead")
                elif isinstance(event, Started):
                    bar.show("started")
                elif isinstance(event, Progress):
                    bar.bar(event.step, event.total, event.eta_s, event.image_index, params.get("count", 1))
                elif isinstance(event, Result):
                    written.append(_write_result(args, event, image, composite_over))
                elif isinstance(event, Done):
                    client.ack(job.id)
                    bar.done()
                    for path in written:
                        print(path)
                    print(f"done in {time.monotonic() - started:.2f}s", file=sys.stderr)
                    return EXIT_OK
                elif isinstance(event, Cancelled):
                    bar.done()
                    print("ace-bridge edit: cancelled", file=sys.stderr)
                    client.ack(job.id)
                    return EXIT_CANCELLED
                elif isinstance(event, Failed):
                    bar.done()
                    print(f"ace-bridge edit: job failed ({event.code}): {event.message}", file=sys.stderr)
                    client.ack(job.id)
                    return EXIT_FAILED
        except KeyboardInterrupt:
            job.cancel()
            print("\nace-bridge edit: cancelling…", file=sys.stderr)
            return EXIT_CANCELLED
    finally:
        client.close()
    return EXIT_FAILED


def _write_result(args: argparse.Namespace, event, image, composite_over) -> str:
    patch = np.frombuffer(event.image.data, np.uint8).reshape(event.image.height, event.image.width, 4)
    out = Path(args.output)
    if event.count > 1:
        out = out.with_name(f"{out.stem}-{event.index + 1}{out.suffix or '.png'}")
    if args.patch_only or image is None:
        picture = patch
    else:
        picture = composite_over(image, patch)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture_image = Image.fromarray(picture)
    try:
        picture_image.save(out)
    except OSError:  # a format without alpha (JPEG): the picture flattened, as an editor exports it
        picture_image.convert("RGB").save(out)
    return str(out)


def register(sub: Subparsers) -> None:
    tasks = "\n".join(
        f"  {t.name:22} {t.label.rstrip('…')}{' (needs a selection: --mask)' if t.needs_selection else ''}"
        for t in TASKS.values()
    )
    edit = sub.add_parser(
        "edit",
        help="run one job and write the result",
        description="Run one ACE++ job on files and write the result.",
        epilog=f"tasks:\n{tasks}\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    edit.add_argument("--task", required=True, metavar="TASK", help="what to do: one of the tasks listed below")
    edit.add_argument("--prompt", default="", help="what to make, in words; ACE++ prompts use {image} for the input")
    edit.add_argument("--image", help="input image (PNG/WebP/JPEG)")
    edit.add_argument("--mask", help="mask image: white = change, soft values kept")
    edit.add_argument(
        "--ref",
        action="append",
        default=[],
        help="reference image (repeatable: several are placed side by side in the order given)",
    )
    edit.add_argument(
        "--control",
        help="control image (depth, contour, sketch) for local_edit --mode no_preprocess "
        "and fft_control, used inside the mask as given",
    )
    edit.add_argument(
        "--expand",
        metavar="L,T,R,B",
        help="outpaint: grow the canvas by these pixels (left, top, right, bottom; one number for all "
        "sides); the new area is generated to fit and -o is the grown picture",
    )
    add_param_flags(edit)
    edit.add_argument("--param", action="append", default=[], metavar="NAME=JSON", help="any other task parameter")
    edit.add_argument("--patch-only", action="store_true", help="write only the result patch (RGBA)")
    edit.add_argument("--dry-run", metavar="DIR", help="run only the recipe locally and write canvas/mask/plan")
    edit.add_argument("--quiet", action="store_true", help="no progress bar")
    edit.add_argument("-o", "--output", help="output PNG (count > 1 adds -1, -2, ...)")
    connection_args(edit)
    edit.set_defaults(func=run_edit)
