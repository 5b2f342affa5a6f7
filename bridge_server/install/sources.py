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
