"""`ace-bridge install|uninstall|package krita|gimp`: the editor plugins."""

from __future__ import annotations

import argparse
from pathlib import Path

from ace_protocol import __version__

from bridge_server.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers, err


def cmd_install(args: argparse.Namespace) -> int:
    try:
        return _install(args)
    except OSError as exc:
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        err(
            f"cannot install the {args.editor} plugin: cannot write{where}: {exc.strerror or exc}; "
            "give a --profile-dir you can write to"
        )
        return EXIT_USAGE


def _install(args: argparse.Namespace) -> int:
    profile = Path(args.profile_dir) if args.profile_dir else None
    if args.editor == "krita":
        from bridge_server.install.krita import install_krita, install_krita_everywhere

        # Without --profile-dir: the native Krita's resource folder and, when installed, Flathub's org.kde.krita.
        for path in [install_krita(profile)] if profile else install_krita_everywhere():
            print(f"installed the krita plugin into {path}; restart Krita to load it")
        return EXIT_OK
    else:
        from bridge_server.install.gimp import install_gimp, install_gimp_everywhere

        # Without --profile-dir: every GIMP 3.x profile (or, before GIMP's first start, the one it will read).
        paths = [install_gimp(profile)] if profile else install_gimp_everywhere()
        for path in paths:
            print(f"installed the gimp plugin into {path}; restart GIMP to load it")
        return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    profile = Path(args.profile_dir) if args.profile_dir else None
    try:
        if args.editor == "krita":
            from bridge_server.install import krita

            root = profile if profile is not None else krita.default_profile_dir()
            if not (root / "pykrita" / krita.PLUGIN_NAME).exists():
                print(f"the krita plugin is not installed in {root}; nothing to remove")
                return EXIT_OK
            krita.uninstall_krita(profile)
            print(f"removed the krita plugin from {root}")
        else:
            from bridge_server.install import gimp

            removed = gimp.uninstall_gimp(profile)
            if not removed:
                print(f"the gimp plugin is not installed{f' in {profile}' if profile else ''}; nothing to remove")
                return EXIT_OK
            for path in removed:
                print(f"removed the gimp plugin from {path}")
    except OSError as exc:
        err(f"cannot remove the {args.editor} plugin: {exc}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_package(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else Path(f"ace-bridge-{args.editor}-{__version__}.zip")
    if args.editor == "krita":
        from bridge_server.install.krita import package_krita

        path = package_krita(out)
    else:
        from bridge_server.install.gimp import package_gimp

        path = package_gimp(out)
    print(path)
    return EXIT_OK


def register(sub: Subparsers) -> None:
    for name, func, text in (
        ("install", cmd_install, "install an editor plugin"),
        ("uninstall", cmd_uninstall, "remove an editor plugin"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("editor", choices=["krita", "gimp"])
        p.add_argument("--profile-dir", help="editor profile folder (default: the editor's standard one)")
        p.set_defaults(func=func)
    package = sub.add_parser("package", help="build a plugin zip")
    package.add_argument("editor", choices=["krita", "gimp"])
    package.add_argument("-o", "--output")
    package.set_defaults(func=cmd_package)
