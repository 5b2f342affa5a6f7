"""`ace-bridge`: serve, edit, status, token, models, install, uninstall, package, panel.

Exit codes: 0 done, 2 usage, 3 daemon unreachable, 4 unauthorized, 5 job failed, 6 cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ace_protocol import __version__
from ace_protocol.discovery import DEFAULT_PORT, config_dir

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_UNAUTHORIZED, EXIT_FAILED, EXIT_CANCELLED = 0, 2, 3, 4, 5, 6
EXIT_CODES_HELP = """exit codes:
  0  done
  2  usage error (bad arguments or input files)
  3  daemon unreachable
  4  unauthorized (wrong token)
  5  job failed
  6  cancelled
"""


def data_dir() -> Path:
    env = os.environ.get("ACE_BRIDGE_DATA_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("ace-bridge", appauthor=False))


def _err(text: str) -> None:
    print(f"ace-bridge: {text}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run_server

    return run_server(args)


# ------------------------------------------------------------------------------------------------ edit


def cmd_edit(args: argparse.Namespace) -> int:
    from .edit_command import run_edit

    return run_edit(args)


# ------------------------------------------------------------------------------------------------ status / token


def cmd_status(args: argparse.Namespace) -> int:
    from ace_protocol.client import BridgeClient, ClientError, Unauthorized

    client = BridgeClient(args.url, args.token, port=args.port, client_name="ace-bridge-cli", editor="cli",
                          reconnect_timeout=0)
    try:
        welcome = client.connect()
        status = client.status()
    except Unauthorized as exc:
        _err(str(exc))
        return EXIT_UNAUTHORIZED
    except ClientError as exc:
        _err(str(exc))
        return EXIT_UNREACHABLE
    finally:
        client.close()
    report = {
        "url": client.url,
        "server_version": welcome.server_version,
        "engine": status.engine,
        "paused": status.paused,
        "queue": status.queue,
        "tasks": [t["name"] for t in welcome.tasks],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"daemon {welcome.server_version} at {client.url}")
        print(f"engine: {status.engine.get('state')} {status.engine.get('model', '')}")
        for warning in status.engine.get("warnings", []):
            print(f"warning: {warning}")
        print(f"tasks: {', '.join(report['tasks']) or '(none: models missing)'}")
        print(f"queue: {len(status.queue)} job(s){' (paused)' if status.paused else ''}")
        for job in status.queue:
            print(f"  {job['state']:8} {job['task']:14} {job['editor']:12} {job['prompt'][:50]}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from .tokens import load_or_create_token, rotate_token

    folder = config_dir()
    if args.rotate:
        token = rotate_token(folder)
        print(token)
        print("rotated: a running daemon refuses the old token from the next connection on", file=sys.stderr)
    else:
        print(load_or_create_token(folder))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ models


def cmd_models(args: argparse.Namespace) -> int:
    from . import models

    root = models.model_path(Path(args.root) if args.root else None)
    if args.models_cmd == "path":
        print(root)
    elif args.models_cmd == "list":
        for row in models.list_models(root):
            mark = "ok " if row.get("installed") else ("-- " if row.get("required") else ".. ")
            size = row.get("bytes", 0) / 1e9
            print(f"{mark}{row['name']:28} {size:7.2f} GB  {row['path']}  ({row.get('used_for', '')})")
    elif args.models_cmd == "verify":
        bad = 0
        for row in models.verify(root):
            status = {True: "ok", False: "FAILED", None: "absent (optional)"}[row["ok"]]
            bad += row["ok"] is False
            print(f"{row['name']:14} {status:18} {row['detail']}")
        return EXIT_FAILED if bad else EXIT_OK
    elif args.models_cmd == "pull":
        try:
            models.pull(root, with_fft=args.fft, confirm=args.yes, token=os.environ.get("HF_TOKEN"))
        except models.ConfirmationRequired as exc:
            print(str(exc))
            return EXIT_USAGE
        except RuntimeError as exc:
            _err(str(exc))
            return EXIT_FAILED
    elif args.models_cmd == "make-tiny":
        from .engine.tiny import build_tiny_model

        out = build_tiny_model(Path(args.dir))
        print(f"tiny random-weight ACE++ model written to {out}; run `ace-bridge serve --model {out}`")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ install / package


def cmd_install(args: argparse.Namespace) -> int:
    profile = Path(args.profile_dir) if args.profile_dir else None
    if args.editor == "krita":
        from .install.krita import install_krita

        path = install_krita(profile)
    else:
        from .install.gimp import install_gimp

        path = install_gimp(profile)
    print(f"installed the {args.editor} plugin into {path}; restart {args.editor.capitalize()} to load it")
    return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    profile = Path(args.profile_dir) if args.profile_dir else None
    if args.editor == "krita":
        from .install.krita import uninstall_krita

        uninstall_krita(profile)
    else:
        from .install import gimp

        gimp.uninstall_gimp(profile)
    print(f"removed the {args.editor} plugin")
    return EXIT_OK


def cmd_package(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else Path(f"ace-bridge-{args.editor}-{__version__}.zip")
    if args.editor == "krita":
        from .install.krita import package_krita

        path = package_krita(out)
    else:
        from .install.gimp import package_gimp

        path = package_gimp(out)
    print(path)
    return EXIT_OK


def cmd_panel(args: argparse.Namespace) -> int:
    from .panel.window import open_panel

    return open_panel(args)


# ------------------------------------------------------------------------------------------------ parser


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="daemon WebSocket URL (default: discovery rules)")
    p.add_argument("--port", type=int, help="daemon port on 127.0.0.1")
    p.add_argument("--token", help="token (default: ACE_BRIDGE_TOKEN or the daemon's token file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ace-bridge",
        description="One local ACE++ daemon for Krita, GIMP and the command line.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ace-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon", epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    group = serve.add_mutually_exclusive_group()
    group.add_argument("--model", help="model root folder (default: `ace-bridge models path`)")
    group.add_argument("--demo", action="store_true", help="run the tiny random-weight model (no download)")
    serve.add_argument("--idle-unload", type=float, default=600.0, help="seconds idle before the model is unloaded")
    serve.add_argument("--memory-mode", default="auto", choices=["auto", "gpu", "model-offload", "sequential-offload"])
    serve.add_argument("--max-tokens", type=int, default=16384, help="largest per-job image-token budget")
    serve.add_argument("--panel", action="store_true", help="open the control panel window at start")
    serve.add_argument("--tls-cert", help="certificate for remote mode (PEM)")
    serve.add_argument("--tls-key", help="private key for remote mode (PEM)")
    serve.add_argument("--tls-self-signed", action="store_true",
                       help="remote mode: make (once, in the config folder) and use a self-signed certificate; "
                            "prints its SHA-256 fingerprint")
    serve.add_argument("--allow-host", action="append", default=[], help="extra Host name allowed in remote mode")
    serve.add_argument("--insecure", action="store_true", help="allow remote mode without TLS (not recommended)")
    serve.add_argument("--paused", action="store_true", help="start with the queue paused")
    serve.add_argument("--no-shared-memory", action="store_true",
                       help="send pixels only in WebSocket frames, never through shared-memory segments (Linux "
                            "loopback clients use them by default; docs/protocol.md, 'Shared memory')")
    speed = serve.add_argument_group("speed options (docs/performance.md has their measured effect)")
    speed.add_argument("--attention", default="auto",
                       help="attention kernel: auto (fastest installed, measured at start), sdpa, cudnn, fa2, fa3, off")
    speed.add_argument("--fuse-lora", action="store_true",
                       help="fuse the active LoRA into the weights (1.16x on an H200; bf16 drift accumulates when "
                            "switching tasks, so off by default)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the transformer (lossless, 1.5x with --fuse-lora on an H200; tens of "
                            "seconds of warm-up per new canvas size)")
    speed.add_argument("--fp8", action="store_true", help="float8 linear layers (lossy; needs sm 8.9+; pays with --compile)")
    speed.add_argument("--cache", type=float, metavar="THRESHOLD", nargs="?", const=0.08,
                       help="first-block step cache (lossy); higher threshold = faster and more drift (default 0.08)")
    speed.add_argument("--quantize", choices=["nf4"], help="4-bit NF4 transformer (bitsandbytes extra; lossy, ~7 GB)")
    speed.add_argument("--no-optimize", action="store_true", help="plain eager pipeline, no speed options at all")
    speed.add_argument("--warm-up", action="store_true",
                       help="load the model and run one step per common canvas size at start (on with --compile, "
                            "so compilation happens before the first job instead of inside it)")
    serve.set_defaults(func=cmd_serve)

    edit = sub.add_parser("edit", help="run one job and write the result", epilog=EXIT_CODES_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    edit.add_argument("--task", required=True)
    edit.add_argument("--prompt", default="")
    edit.add_argument("--image", help="input image (PNG/WebP/JPEG)")
    edit.add_argument("--mask", help="mask image: white = change, soft values kept")
    edit.add_argument("--ref", action="append", default=[], help="reference image (repeatable)")
    edit.add_argument("--width", type=int)
    edit.add_argument("--height", type=int)
    edit.add_argument("--seed", type=int)
    edit.add_argument("--steps", type=int)
    edit.add_argument("--count", type=int)
    edit.add_argument("--guidance", type=float)
    edit.add_argument("--max-tokens", type=int)
    edit.add_argument("--feather", type=int)
    edit.add_argument("--mode", help="local_edit mode: repaint, canny, mosaic, recolor")
    edit.add_argument("--face", action="store_true", help="reference_edit: the reference is a face")
    edit.add_argument("--param", action="append", default=[], metavar="NAME=JSON", help="any other task parameter")
    edit.add_argument("--patch-only", action="store_true", help="write only the result patch (RGBA)")
    edit.add_argument("--dry-run", metavar="DIR", help="run only the recipe locally and write canvas/mask/plan")
    edit.add_argument("--quiet", action="store_true", help="no progress bar")
    edit.add_argument("-o", "--output", help="output PNG (count > 1 adds -1, -2, ...)")
    _connection_args(edit)
    edit.set_defaults(func=cmd_edit)

    status = sub.add_parser("status", help="show the daemon's engine and queue")
    _connection_args(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    token = sub.add_parser("token", help="print (or rotate) the daemon token")
    token.add_argument("--rotate", action="store_true")
    token.set_defaults(func=cmd_token)

    models = sub.add_parser("models", help="list, download, verify model files")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    for name, text in (("list", "what is installed"), ("verify", "check the files"), ("path", "print the model root")):
        p = models_sub.add_parser(name, help=text)
        p.add_argument("--root", help="model root folder")
    pull = models_sub.add_parser("pull", help="download FLUX.1-Fill-dev and the ACE++ files")
    pull.add_argument("--root")
    pull.add_argument("--fft", action="store_true", help="also the 23.8 GB FFT model (for the instruct task)")
    pull.add_argument("--yes", action="store_true", help="confirm the download size and licence")
    tiny = models_sub.add_parser("make-tiny", help="build the tiny random-weight model for tests and --demo")
    tiny.add_argument("dir")
    tiny.add_argument("--root", help=argparse.SUPPRESS)
    models.set_defaults(func=cmd_models)

    for name, func, text in (("install", cmd_install, "install an editor plugin"),
                             ("uninstall", cmd_uninstall, "remove an editor plugin")):
        p = sub.add_parser(name, help=text)
        p.add_argument("editor", choices=["krita", "gimp"])
        p.add_argument("--profile-dir", help="editor profile folder (default: the editor's standard one)")
        p.set_defaults(func=func)
    package = sub.add_parser("package", help="build a plugin zip")
    package.add_argument("editor", choices=["krita", "gimp"])
    package.add_argument("-o", "--output")
    package.set_defaults(func=cmd_package)

    panel = sub.add_parser("panel", help="open the control panel (starts the daemon if needed)")
    panel.add_argument("--browser", action="store_true", help="open in the web browser instead of a window")
    _connection_args(panel)
    panel.set_defaults(func=cmd_panel)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


