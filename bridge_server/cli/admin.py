"""`ace-bridge status`, `token` and `panel`: looking after a running daemon."""

from __future__ import annotations

import argparse
import json
import sys

from ace_protocol.discovery import config_dir

from bridge_server.cli.common import (
    EXIT_OK,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Subparsers,
    connection_args,
    err,
)


def cmd_status(args: argparse.Namespace) -> int:
    from ace_protocol.client import BridgeClient, ClientError, Unauthorized

    client = BridgeClient(
        args.url, args.token, port=args.port, client_name="ace-bridge-cli", editor="cli", reconnect_timeout=0
    )
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
        for line in engine_lines(status.engine):
            print(line)
        for warning in status.engine.get("warnings", []):
            print(f"warning: {warning}")
        print(f"tasks: {', '.join(report['tasks']) or '(none: models missing)'}")
        print(f"queue: {len(status.queue)} job(s){' (paused)' if status.paused else ''}")
        for job in status.queue:
            who = job.get("person") or job["editor"]
            where = f" on {job['replica']}" if job.get("replica") else ""
            print(f"  {job['state']:8} {job['task']:14} {who:12} {job['prompt'][:50]}{where}")
        print_replicas(status.engine)
    return EXIT_OK


def engine_lines(engine: dict) -> list[str]:
    """The memory tier and why, and a load error with its kind (no_gpu, too_little_ram, wrong_file, ...)."""
    lines = []
    if engine.get("tier"):
        lines.append(f"tier: {engine['tier']} ({engine.get('weights', '')}) - {engine.get('tier_reason', '')}")
    elif engine.get("tier_requested"):
        lines.append(f"tier: {engine['tier_requested']} (chosen when the model loads)")
    if engine.get("tier_hint"):
        lines.append(f"hint: {engine['tier_hint']}")
    if engine.get("error"):
        kind = f" [{engine['error_kind']}]" if engine.get("error_kind") else ""
        lines.append(f"error{kind}: {engine['error']}")
    return lines


def print_replicas(engine: dict) -> None:
    """`serve --ray`: one line per engine replica (GPU, tier, loaded adapters, busy/idle, jobs done, failures)."""
    ray = engine.get("ray")
    if not isinstance(ray, dict):
        return
    print(
        f"ray: {ray.get('live', 0)} of {ray.get('replicas', 0)} replica(s) live at {ray.get('address')}"
        f"{' (reattached)' if ray.get('reattached') else ''}; {ray.get('restarts', 0)} job restart(s)"
    )
    for r in engine.get("replicas", []):
        busy = "busy" if r.get("busy") else "idle"
        state = r.get("state", "?")
        adapters = ",".join(r.get("adapters") or []) or "-"
        print(
            f"  replica {r.get('replica')} [{state}, {busy if state == 'ready' else '-'}] pid {r.get('pid', '?')} "
            f"on {r.get('node', '?')} {r.get('gpu', '?')}, tier {r.get('tier') or '-'}, adapters {adapters}, "
            f"{r.get('jobs_done', 0)} done, {r.get('failures', 0) + r.get('lost', 0)} failure(s)"
            + (f": {r['note']}" if r.get("note") else "")
        )


def cmd_token(args: argparse.Namespace) -> int:
    from bridge_server.server.tokens import load_or_create_token, rotate_token

    folder = config_dir()
    if args.action:
        return people_command(folder, args.action, args.name)
    if args.rotate:
        token = rotate_token(folder)
        print(token)
        print("rotated: a running daemon refuses the old token from the next connection on", file=sys.stderr)
    else:
        print(load_or_create_token(folder))
    return EXIT_OK


def people_command(folder, action: str, name: str | None) -> int:
    """`token add NAME` (prints the new token once), `token list`, `token revoke NAME` (a running daemon closes that
    person's sessions and cancels their jobs within a second)."""
    from bridge_server.server.people import PeopleError, add_person, load_people, revoke_person

    if action == "list":
        for person, entry in sorted(load_people(folder).items()):
            print(f"{person}\t{entry['token'][:8]}…")
        return EXIT_OK
    if not name:
        err(f"ace-bridge token {action} needs a NAME")
        return EXIT_USAGE
    if action == "add":
        try:
            print(add_person(folder, name))
        except PeopleError as exc:
            err(str(exc))
            return EXIT_USAGE
        print(f"token for {name}: give it to them; `ace-bridge token revoke {name}` takes it back", file=sys.stderr)
        return EXIT_OK
    if not revoke_person(folder, name):
        err(f"no token named {name}")
        return EXIT_USAGE
    print(f"revoked {name}: a running daemon closes their sessions and cancels their jobs", file=sys.stderr)
    return EXIT_OK


def cmd_panel(args: argparse.Namespace) -> int:
    from bridge_server.server.panel.window import open_panel

    return open_panel(args)


def register(sub: Subparsers) -> None:
    status = sub.add_parser("status", help="show the daemon's engine and queue")
    connection_args(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    token = sub.add_parser("token", help="print (or rotate) the daemon token; add, list or revoke named tokens")
    token.add_argument("--rotate", action="store_true")
    token.add_argument(
        "action",
        nargs="?",
        choices=["add", "list", "revoke"],
        help="named tokens, one per person: fairness and usage per person, revocable one by one",
    )
    token.add_argument("name", nargs="?", help="the person's name (add, revoke)")
    token.set_defaults(func=cmd_token)

    panel = sub.add_parser("panel", help="open the control panel (starts the daemon if needed)")
    panel.add_argument("--browser", action="store_true", help="open in the web browser instead of a window")
    connection_args(panel)
    panel.set_defaults(func=cmd_panel)
