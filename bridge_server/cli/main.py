"""`ace-bridge`: serve, edit, status, token, models, install, uninstall, package, panel.

Each command group lives in its own module and adds its commands to the parser here.
Exit codes: 0 done, 2 usage, 3 daemon unreachable, 4 unauthorized, 5 job failed, 6 cancelled.
"""

from __future__ import annotations

import argparse
import os
import sys

from ace_protocol import __version__

from bridge_server.cli import admin, edit, install, models, serve
from bridge_server.cli.common import EXIT_CODES_HELP, EXIT_FAILED


class Parser(argparse.ArgumentParser):
    """Usage mistakes as ONE line (what is wrong and where help is), exit 2; sub-commands inherit it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ace-bridge",
        description="One local ACE++ daemon for Krita, GIMP and the command line.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ace-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (serve, edit, admin, models, install):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # no traceback reaches a user; ACE_BRIDGE_DEBUG=1 shows it
        if os.environ.get("ACE_BRIDGE_DEBUG"):
            raise
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ace-bridge {args.command}: {what} (ACE_BRIDGE_DEBUG=1 shows the details)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
