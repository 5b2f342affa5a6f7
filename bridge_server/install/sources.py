"""Where the plugin sources come from: the repository's `plugins_krita/` and `plugins_gimp/` in a checkout, or
the copies the wheel carries inside this package (`plugin_krita/`, `plugin_gimp/`, see pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def plugin_folder(checkout_name: str, wheel_name: str, marker: str) -> Path:
    """The folder holding `marker` (a path relative to it): first a checkout above this file, then the wheel."""
    for base in _HERE.parents:
        candidate = base / checkout_name
        if (candidate / marker).is_file():
            return candidate
    bundled = _HERE / wheel_name
    if (bundled / marker).is_file():
        return bundled
    raise FileNotFoundError(
        f"the plugin sources ({checkout_name}/{marker}) are neither in a checkout above {_HERE} nor in the "
        f"installed package ({bundled}); reinstall ace-bridge"
    )


def launcher_command() -> list[str]:
    """How a plug-in should run this `ace-bridge` (its "Start ACE Bridge" button): the `ace-bridge` script next
    to this Python (a venv or pipx install), else this Python with `-m bridge_server.cli`."""
    import shutil
    import sys

    bin_dir = Path(sys.executable).parent
    for name in ("ace-bridge", "ace-bridge.exe"):
        script = bin_dir / name
        if script.is_file():
            return [str(script)]
    found = shutil.which("ace-bridge")
    if found:
        return [str(Path(found).resolve())]
    return [str(Path(sys.executable).absolute()), "-m", "bridge_server.cli"]


def record_launcher(plugin_dir: Path) -> Path:
    """Write ace-bridge-launcher.json into the plug-in folder (read by ace_editor.daemon.find_command)."""
    from ace_editor.daemon import write_launcher_record
    from ace_protocol import __version__

    return write_launcher_record(plugin_dir, launcher_command(), __version__)
