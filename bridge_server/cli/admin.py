"""`ace-bridge status`, `token` and `panel`: looking after a running daemon."""

from __future__ import annotations

import argparse
import json
import sys

from ace_protocol.discovery import config_dir

from bridge_server.cli.common import EXIT_OK, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE, Subparsers, connection_args, err


def cmd_status(args: argparse.Namespace) -> int:
    from ace_protocol.client import BridgeClient, ClientError, Unauthorized

    client = BridgeClient(args.url, args.token, port=args.port, client_name="ace-bridge-cli", editor="cli",
                          reconnect_timeout=0)
    try:
        welcome = client.connect()
        status = client.status()
    except Unauthorized as exc:
        err(str(exc))
        return EXIT_UNAUTHORIZED
    except ClientError as exc:
        err(str(exc))
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
    from bridge_server.server.tokens import load_or_create_token, rotate_token

    folder = config_dir()
    if args.rotate:
        token = rotate_token(folder)
        print(token)
        print("rotated: a running daemon refuses the old token from the next connection on", file=sys.stderr)
    else:
        print(load_or_create_token(folder))
    return EXIT_OK


def cmd_panel(args: argparse.Namespace) -> int:
    from bridge_server.server.panel.window import open_panel

    return open_panel(args)


def register(sub: Subparsers) -> None:
    status = sub.add_parser("status", help="show the daemon's engine and queue")
    connection_args(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    token = sub.add_parser("token", help="print (or rotate) the daemon token")
    token.add_argument("--rotate", action="store_true")
    token.set_defaults(func=cmd_token)

    panel = sub.add_parser("panel", help="open the control panel (starts the daemon if needed)")
    panel.add_argument("--browser", action="store_true", help="open in the web browser instead of a window")
    connection_args(panel)
    panel.set_defaults(func=cmd_panel)
