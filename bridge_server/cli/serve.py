"""`ace-bridge serve`: lock, engine, app, runtime.json, clean shutdown on Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from ace_protocol import __version__
from ace_protocol.discovery import DEFAULT_PORT, RUNTIME_FILE, config_dir, read_runtime, url_for_port
from ace_protocol.tasks import MEMORY_MODES
from aiohttp import web

from bridge_server.cli.common import EXIT_CODES_HELP, Subparsers
from bridge_server.config import ServerConfig, is_loopback_host
from bridge_server.engine.tiers import TIER_NAMES
from bridge_server.jobs.gate import Gate
from bridge_server.server.app import BridgeRunner, create_app
from bridge_server.server.lock import AlreadyRunning, DaemonLock
from bridge_server.server.tokens import load_or_create_token, write_private

log = logging.getLogger("ace_bridge")


def engine_factory_for(args: argparse.Namespace, data: Path):
    """The engine to run: the tiny model for --demo (built on first use), else the model root."""
    from bridge_server.models import layout as models

    if args.demo:
        root = data / "demo-model"
    else:
        root = models.model_path(Path(args.model) if args.model else None)

    if getattr(args, "ray", None) is not None:
        return ray_factory(args, root), root

    def factory():
        from bridge_server.engine.ace_plus import AcePlusEngine

        if args.demo and not (root / models.BASE_DIR / "model_index.json").exists():
            from bridge_server.engine.tiny import build_tiny_model

            build_tiny_model(root)
        # The queue unloads an idle engine on the engine thread (ServerConfig.idle_unload_s); the engine's own
        # timer is for standalone use, so it is off here rather than a second timer doing the same work.
        return AcePlusEngine(
            root,
            memory_mode=args.memory_mode,
            idle_unload_s=None,
            max_tokens_limit=args.max_tokens,
            optimizations=speed_options(args),
            quantize=getattr(args, "quantize", None),
            tier=getattr(args, "tier", "auto"),
            compile_cache=data / "compile-cache",  # torch.compile's work kept between starts
        )

    return factory, root


def ray_factory(args: argparse.Namespace, root: Path):
    """`--ray [ADDRESS]`: the engines run as Ray Serve replicas (docs/scaling.md). Ray is imported here only."""

    def factory():
        from bridge_server.models import layout as models

        if args.demo and not (root / models.BASE_DIR / "model_index.json").exists():
            from bridge_server.engine.tiny import build_tiny_model

            build_tiny_model(root)  # once, here, so the replicas do not race to build it
        from bridge_server.jobs.replicas import RayReplicas

        spec = {
            "root": str(root),
            "memory_mode": args.memory_mode,
            "max_tokens": args.max_tokens,
            "optimizations": speed_options(args),
            "quantize": getattr(args, "quantize", None),
        }
        address = None if args.ray == "local" else args.ray
        return RayReplicas(spec, address=address, replicas=args.replicas).connect()

    return factory


def speed_options(args: argparse.Namespace) -> dict | None:
    """The engine's optimisation options from the command line. Defaults keep results exact: only the attention
    kernel choice is on (it changes nothing but speed); fused QKV and a channels-last VAE measured slower on an
    H200, and fusing LoRAs drifts in bf16 over task switches, so those are opt-in (docs/performance.md)."""
    if getattr(args, "no_optimize", False):
        return None
    return {
        "attention": getattr(args, "attention", "auto"),
        "fuse_lora": bool(getattr(args, "fuse_lora", False)),
        "fuse_qkv": False,
        "vae_channels_last": False,
        "compile": bool(getattr(args, "compile", False)),
        "fp8": bool(getattr(args, "fp8", False)),
        "cache": getattr(args, "cache", None) is not None,
        "cache_threshold": getattr(args, "cache", None) or 0.08,
    }


def explain_missing_models(root: Path) -> str | None:
    from bridge_server.models import layout as models

    if (root / models.BASE_DIR / "model_index.json").exists():
        return None
    return (
        f"No model weights found in {root}.\n"
        "  * Download them (about 35 GB; FLUX.1 [dev] non-commercial licence): ace-bridge models pull --yes\n"
        "  * Or point to a folder you already have:                          ace-bridge serve --model DIR\n"
        "  * Or try everything with a tiny random-weight model:              ace-bridge serve --demo\n"
        "The daemon starts anyway; every job will answer 'model_missing' until the weights are there."
    )


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls_cert and args.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def raise_open_file_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, so a flood of half-open connections cannot exhaust 1024 descriptors
    and lock editors out (the connection caps in server/security.py stay far below it)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def make_private(folder: Path, data: Path) -> str | None:
    """Config and data folders 0700, files 0600 whatever the umask; an older install is tightened once, with one
    log line. A folder that cannot be made gives the message to print instead."""
    from bridge_server.store.private import private_dir, tighten

    os.umask(0o077)  # everything this process creates from here on is private too
    for path in (folder, data):
        try:
            private_dir(path)
        except OSError as exc:
            if path.is_dir():
                continue  # read-only but there: the lock file below says what is wrong, in one line
            return (
                f"ace-bridge: cannot create the folder {path} ({exc.strerror or exc}); "
                "set ACE_BRIDGE_CONFIG_DIR / ACE_BRIDGE_DATA_DIR to a writable folder"
            )
    changed = tighten([folder, data], skip=[data / "models", data / "demo-model"])
    if changed:
        log.info(
            "made %d files and folders under %s and %s private to this user (they were readable by others)",
            changed,
            folder,
            data,
        )
    return None


def run_server(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bridge_server.server.security import install_log_rate_limit

    install_log_rate_limit()
    raise_open_file_limit()
    folder = config_dir()
    from bridge_server.store.paths import data_dir

    data = data_dir()
    loopback = is_loopback_host(args.host)
    if getattr(args, "tls_self_signed", False) and not (args.tls_cert and args.tls_key):
        from bridge_server.server.tls import TlsError, ensure_self_signed, fingerprint_sha256, subject_names

        try:
            cert, key, created = ensure_self_signed(folder / "tls", subject_names(args.host, args.allow_host))
        except TlsError as exc:
            print(f"ace-bridge: {exc}", file=sys.stderr)
            return 2
        args.tls_cert, args.tls_key = str(cert), str(key)
        print(f"{'made' if created else 'using'} self-signed TLS certificate {cert}", flush=True)
        print(f"TLS certificate SHA-256 fingerprint: {fingerprint_sha256(cert)}", flush=True)
    context = tls_context(args)
    if not loopback and context is None and not args.insecure:
        print(
            f"ace-bridge: refusing to listen on {args.host} without TLS: anyone on the network could watch the token.\n"
            "  Give --tls-cert and --tls-key, or --tls-self-signed, or pass --insecure if this network is trusted.",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "quantize", None) == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        print(
            "ace-bridge: --quantize nf4 needs bitsandbytes: pip install 'ace-bridge[nf4]' (keep your torch)",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "ray", None) is not None:
        if importlib.util.find_spec("ray") is None:
            print("ace-bridge: --ray needs Ray Serve: pip install 'ace-bridge[ray]' (keep your torch)", file=sys.stderr)
            return 2
        if not (args.replicas == "auto" or str(args.replicas).isdigit()):
            print(f"ace-bridge: --replicas takes a number or auto, not {args.replicas!r}", file=sys.stderr)
            return 2
    problem = make_private(folder, data)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    lock = DaemonLock(folder)
    try:
        lock.acquire()
    except OSError as exc:  # a read-only or foreign config folder: one clear line, no traceback
        print(
            f"ace-bridge: cannot write the lock file {lock.path} ({exc.strerror or exc}); the config folder "
            "must be writable, or set ACE_BRIDGE_CONFIG_DIR to a writable folder",
            file=sys.stderr,
        )
        return 2
    except AlreadyRunning:
        runtime = read_runtime(folder) or {}
        print(
            f"ace-bridge: a daemon already runs for {folder} (PID {runtime.get('pid', '?')}, {runtime.get('url', '?')}).\n"
            "  Stop it first, or use another config folder (ACE_BRIDGE_CONFIG_DIR).",
            file=sys.stderr,
        )
        return 2
    try:
        factory, root = engine_factory_for(args, data)
        if not args.demo:
            message = explain_missing_models(root)
            if message:
                print(message, file=sys.stderr)
        config = ServerConfig(
            config_dir=folder,
            data_dir=data,
            host=args.host,
            port=args.port,
            engine_factory=factory,
            gate=Gate(paused=args.paused),
            idle_unload_s=args.idle_unload,
            max_tokens_limit=args.max_tokens,
            allowed_hosts=tuple(args.allow_host),
            tls=context is not None,
            shared_memory=not getattr(args, "no_shared_memory", False),
            extra={"warm_up": bool(getattr(args, "warm_up", False) or getattr(args, "compile", False))},
        )
        load_or_create_token(folder)
        return asyncio.run(_serve(config, context, args))
    finally:
        lock.release()


async def _serve(config: ServerConfig, context: ssl.SSLContext | None, args: argparse.Namespace) -> int:
    app = create_app(config)
    runner = BridgeRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=context, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"ace-bridge: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr)
        return 2
    addresses = runner.addresses  # the bound socket tells the real port when --port 0 was asked
    port = addresses[0][1] if addresses else config.port
    host = config.host if config.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = url_for_port(port, host, tls=context is not None)
    runtime_path = config.config_dir / RUNTIME_FILE
    write_private(runtime_path, json.dumps({"url": url, "port": port, "pid": os.getpid(), "version": __version__}))
    print(f"ACE Bridge {__version__} listening on {url}", flush=True)
    print(f"token file: {config.config_dir / 'token'} (ace-bridge token prints it)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    if getattr(args, "panel", False):
        from bridge_server.server.panel.window import open_panel_for_running

        loop.run_in_executor(None, open_panel_for_running, url)
    try:
        await stop.wait()
    finally:
        print("shutting down", flush=True)
        await runner.cleanup()
        try:
            if (json.loads(runtime_path.read_text()).get("pid")) == os.getpid():
                runtime_path.unlink()
        except (OSError, ValueError):
            pass
    return 0


def register(sub: Subparsers) -> None:
    serve = sub.add_parser(
        "serve", help="run the daemon", epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    group = serve.add_mutually_exclusive_group()
    group.add_argument("--model", help="model root folder (default: `ace-bridge models path`)")
    group.add_argument("--demo", action="store_true", help="run the tiny random-weight model (no download)")
    serve.add_argument("--idle-unload", type=float, default=600.0, help="seconds idle before the model is unloaded")
    serve.add_argument(
        "--memory-mode",
        default="auto",
        choices=list(MEMORY_MODES),
        help="; ".join(f"{mode}: {what}" for mode, what in MEMORY_MODES.items()),
    )
    serve.add_argument(
        "--tier",
        default="auto",
        choices=["auto", *TIER_NAMES],
        help="memory tier (default auto: the fastest that fits free VRAM and host RAM; "
        "`ace-bridge status` shows the choice and why)",
    )
    serve.add_argument("--max-tokens", type=int, default=16384, help="largest per-job image-token budget")
    serve.add_argument("--panel", action="store_true", help="open the control panel window at start")
    serve.add_argument("--tls-cert", help="certificate for remote mode (PEM)")
    serve.add_argument("--tls-key", help="private key for remote mode (PEM)")
    serve.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="remote mode: make (once, in the config folder) and use a self-signed certificate; "
        "prints its SHA-256 fingerprint",
    )
    serve.add_argument("--allow-host", action="append", default=[], help="extra Host name allowed in remote mode")
    serve.add_argument("--insecure", action="store_true", help="allow remote mode without TLS (not recommended)")
    serve.add_argument("--paused", action="store_true", help="start with the queue paused")
    scale = serve.add_argument_group("engine replicas on Ray (pip install 'ace-bridge[ray]'; docs/scaling.md)")
    scale.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the engines as Ray Serve replicas in the Ray cluster at ADDRESS (e.g. auto, or "
        "10.0.0.5:6379); without ADDRESS, a private Ray on this machine",
    )
    scale.add_argument(
        "--replicas",
        default="auto",
        metavar="N|auto",
        help="engine replicas with --ray: N, or auto = one per GPU in the cluster (default)",
    )
    serve.add_argument(
        "--no-shared-memory",
        action="store_true",
        help="send pixels only in WebSocket frames, never through shared-memory segments (Linux "
        "loopback clients use them by default; docs/protocol.md, 'Shared memory')",
    )
    speed = serve.add_argument_group("speed options (docs/performance.md has their measured effect)")
    speed.add_argument(
        "--attention",
        default="auto",
        help="attention kernel: auto (fastest installed, measured at start), sdpa, cudnn, fa2, fa3, off",
    )
    speed.add_argument(
        "--fuse-lora",
        action="store_true",
        help="fuse the active LoRA into the weights (1.16x on an H200; bf16 drift accumulates when "
        "switching tasks, so off by default)",
    )
    speed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer (lossless, 1.5x with --fuse-lora on an H200; tens of "
        "seconds of warm-up per new canvas size)",
    )
    speed.add_argument(
        "--fp8", action="store_true", help="float8 linear layers (lossy; needs sm 8.9+; pays with --compile)"
    )
    speed.add_argument(
        "--cache",
        type=float,
        metavar="THRESHOLD",
        nargs="?",
        const=0.08,
        help="first-block step cache (lossy); higher threshold = faster and more drift (default 0.08)",
    )
    speed.add_argument("--quantize", choices=["nf4"], help="4-bit NF4 transformer (bitsandbytes extra; lossy, ~7 GB)")
    speed.add_argument("--no-optimize", action="store_true", help="plain eager pipeline, no speed options at all")
    speed.add_argument(
        "--warm-up",
        action="store_true",
        help="load the model and run one step per common canvas size at start (on with --compile, "
        "so compilation happens before the first job instead of inside it)",
    )
    serve.set_defaults(func=run_server)
