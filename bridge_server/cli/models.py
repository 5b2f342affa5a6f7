"""`ace-bridge models list|verify|path|pull|make-tiny|find|quantize`: the model files on this machine."""

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
            if args.annotators:
                pull.pull_annotators(root, source=Path(source) if source else None, token=os.environ.get("HF_TOKEN"))
            elif source:
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
        except Exception as exc:  # noqa: BLE001 - offline, DNS, proxy, disk: one line, no traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            err(f"models pull failed: {first[:300]}. Check the network (or copy the files and use --from DIR)")
            return EXIT_FAILED
    elif args.models_cmd == "find":
        return cmd_find(args, root)
    elif args.models_cmd == "quantize":
        return cmd_quantize(args, root)
    elif args.models_cmd == "make-tiny":
        from bridge_server.engine.tiny import build_tiny_model

        out = build_tiny_model(Path(args.dir))
        print(f"tiny random-weight ACE++ model written to {out}; run `ace-bridge serve --model {out}`")
    return EXIT_OK


def cmd_find(args: argparse.Namespace, root: Path) -> int:
    """Scan, print what was found and what each task still lacks, and (unless --dry-run) record the choice."""
    from bridge_server.models import find

    result = find.scan([Path(d) for d in args.dirs], hf_cache=not args.no_hf_cache)
    print("searched: " + (", ".join(result.searched) or "nothing (give folders, or install a HF cache)"))
    print(find.table(result))
    if args.dry_run:
        return EXIT_OK
    for line in find.record(result, root):
        print(line)
    print(f"`ace-bridge serve --model {root}` uses these files (the tier is chosen at load; see `ace-bridge status`)")
    return EXIT_OK


def cmd_quantize(args: argparse.Namespace, root: Path) -> int:
    """Write a GGUF of a transformer, read it back, then load it through the daemon's own GGUF path."""
    from tqdm.auto import tqdm

    from bridge_server.models import find, quantize
    from bridge_server.models.layout import ModelLayout

    layout = ModelLayout(root)
    source = Path(args.source) if args.source else (layout.fft if args.fft else layout.base)
    if not args.source and not args.fft:
        from bridge_server.models.assemble import has_transformer_weights

        if not has_transformer_weights(layout.base):
            # a base folder assembled from ComfyUI files: the Fill weights are the recorded single file
            fill = find.transformer_files(root)["fill"]
            single = next((fill[k] for k in ("bf16", "fp16", "fp32", "fp8") if k in fill), None)
            source = Path(single) if single else source
    qtype = args.type.upper()
    if args.out:
        out = Path(args.out)
    else:
        stem = "ace_plus_fft" if args.fft or "fft" in source.name.lower() else "flux1-fill-dev"
        out = root / find.GGUF_DIR / f"{stem}-{qtype}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = quantize.quantize(source, out, qtype, progress=tqdm)
    except quantize.QuantizeError as exc:
        err(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        err(f"stopped; run the same command again to resume ({out}.parts keeps the finished tensors)")
        return EXIT_FAILED
    print(report.line())
    if not args.no_load_check:
        problem = load_check(out, layout)
        if problem:
            err(problem)
            return EXIT_FAILED
        print(f"loaded back through the daemon's GGUF path: OK ({out})")
    return EXIT_OK


def load_check(path: Path, layout) -> str | None:
    """Load the GGUF the way the engine does (diffusers GGUFQuantizationConfig, config from the model root)."""
    import torch

    from bridge_server.engine.base import EngineError
    from bridge_server.engine.weights import load_gguf_transformer
    from bridge_server.models.layout import ModelLayout

    config = layout.base if ModelLayout(layout.root).has_base() else None
    if config is None:
        from bridge_server.models.configs import fill_config_dir

        config = fill_config_dir()
    try:
        model = load_gguf_transformer(path, config, dtype=torch.bfloat16)
    except EngineError as exc:
        return f"{path} does not load: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        return f"{path} does not load: {type(exc).__name__}: {exc}"
    del model
    return None


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
    pull.add_argument(
        "--annotators",
        action="store_true",
        help="only the contour/depth annotators (about 510 MB, converted to safetensors; checked against their "
        "manifest)",
    )
    pull.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="copy from another model folder instead of the hub (env ACE_BRIDGE_PULL_FROM)",
    )
    pull.add_argument(
        "--limit-rate",
        type=float,
        default=0.0,
        metavar="BYTES_PER_S",
        help="cap the copy speed of --from (env ACE_BRIDGE_PULL_RATE)",
    )
    found = models_sub.add_parser(
        "find",
        help="find the weights you already have (HF cache, ComfyUI, folders) "
        "by their tensors, show what each task lacks, and use them",
    )
    found.add_argument("dirs", nargs="*", metavar="DIR", help="folders to scan (a ComfyUI install is recognised)")
    found.add_argument("--root", help="model root to record the choice in (default: `ace-bridge models path`)")
    found.add_argument("--no-hf-cache", action="store_true", help="do not scan the Hugging Face cache")
    found.add_argument("--dry-run", action="store_true", help="only print the table")
    quant = models_sub.add_parser("quantize", help="write a GGUF of a transformer (Fill or the FFT) for small GPUs")
    quant.add_argument(
        "--type",
        default="Q8_0",
        type=str.upper,
        choices=["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "BF16", "F16"],
        help="GGML type (Q8_0 ~12.7 GB, Q5_x ~8.3-8.9 GB, Q4_x ~6.8-7.6 GB for FLUX)",
    )
    quant.add_argument("--fft", action="store_true", help="quantize the ACE++ FFT model (instruct) instead of Fill")
    quant.add_argument(
        "--source",
        help="a transformer .safetensors file or diffusers folder (default: the model "
        "root's Fill transformer, or its FFT file with --fft)",
    )
    quant.add_argument("--out", help="output .gguf (default: ROOT/gguf/<name>-<TYPE>.gguf, where serve finds it)")
    quant.add_argument("--root", help="model root (default: `ace-bridge models path`)")
    quant.add_argument("--no-load-check", action="store_true", help="skip loading the result back with diffusers")
    tiny = models_sub.add_parser("make-tiny", help="build the tiny random-weight model for tests and --demo")
    tiny.add_argument("dir")
    tiny.add_argument("--root", help=argparse.SUPPRESS)
    models.set_defaults(func=cmd_models)
