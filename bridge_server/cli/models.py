"""`ace-bridge models list|verify|path|pull|make-tiny`: the model files on this machine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bridge_server.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers, err


def cmd_models(args: argparse.Namespace) -> int:
    from bridge_server.models import layout as models
    from bridge_server.models import pull, verify

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
        for row in verify.verify(root):
            status = {True: "ok", False: "FAILED", None: "absent (optional)"}[row["ok"]]
            bad += row["ok"] is False
            print(f"{row['name']:14} {status:18} {row['detail']}")
        return EXIT_FAILED if bad else EXIT_OK
    elif args.models_cmd == "pull":
        source = args.source or os.environ.get("ACE_BRIDGE_PULL_FROM")
        try:
            if source:
                if not args.yes:
                    raise pull.ConfirmationRequired(pull.pull_notice(args.fft) + "\nRun again with --yes.")
                rate = args.limit_rate or float(os.environ.get("ACE_BRIDGE_PULL_RATE") or 0)
                pull.pull_from_folder(Path(source), root, with_fft=args.fft, limit_rate=rate)
            else:
                pull.pull(root, with_fft=args.fft, confirm=args.yes, token=os.environ.get("HF_TOKEN"))
        except pull.ConfirmationRequired as exc:
            print(str(exc))
            return EXIT_USAGE
        except RuntimeError as exc:
            err(str(exc))
            return EXIT_FAILED
    elif args.models_cmd == "make-tiny":
        from bridge_server.engine.tiny import build_tiny_model

        out = build_tiny_model(Path(args.dir))
        print(f"tiny random-weight ACE++ model written to {out}; run `ace-bridge serve --model {out}`")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    models = sub.add_parser("models", help="list, download, verify model files")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    for name, text in (("list", "what is installed"), ("verify", "check the files"), ("path", "print the model root")):
        p = models_sub.add_parser(name, help=text)
        p.add_argument("--root", help="model root folder")
    pull = models_sub.add_parser("pull", help="download FLUX.1-Fill-dev and the ACE++ files")
    pull.add_argument("--root")
    pull.add_argument("--fft", action="store_true", help="also the 23.8 GB FFT model (for the instruct task)")
    pull.add_argument("--yes", action="store_true", help="confirm the download size and licence")
    pull.add_argument("--from", dest="source", metavar="DIR",
                      help="copy from another model folder instead of the hub (env ACE_BRIDGE_PULL_FROM)")
    pull.add_argument("--limit-rate", type=float, default=0.0, metavar="BYTES_PER_S",
                      help="cap the copy speed of --from (env ACE_BRIDGE_PULL_RATE)")
    tiny = models_sub.add_parser("make-tiny", help="build the tiny random-weight model for tests and --demo")
    tiny.add_argument("dir")
    tiny.add_argument("--root", help=argparse.SUPPRESS)
    models.set_defaults(func=cmd_models)

