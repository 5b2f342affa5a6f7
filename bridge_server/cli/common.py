"""What every command shares: exit codes, the error line, the connection options."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_UNAUTHORIZED, EXIT_FAILED, EXIT_CANCELLED = 0, 2, 3, 4, 5, 6
EXIT_CODES_HELP = """exit codes:
  0  done
  2  usage error (bad arguments or input files)
  3  daemon unreachable
  4  unauthorized (wrong token)
  5  job failed
  6  cancelled
"""

#: What `ArgumentParser.add_subparsers()` returns; each command group adds its commands to it.
Subparsers = argparse._SubParsersAction


def err(text: str) -> None:
    print(f"ace-bridge: {text}", file=sys.stderr)


def connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="daemon WebSocket URL (default: discovery rules)")
    p.add_argument("--port", type=int, help="daemon port on 127.0.0.1")
    p.add_argument("--token", help="token (default: ACE_BRIDGE_TOKEN or the daemon's token file)")
