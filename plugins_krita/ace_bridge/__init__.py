"""ACE Bridge for Krita: select, describe the change, get a new layer from the local ACE++ daemon.

Fails early with a readable ImportError when the vendored packages are missing (a source checkout copied by hand
instead of `ace-bridge install krita`) or when this Krita's major version is not supported.
"""

from __future__ import annotations

import os

SUPPORTED_KRITA_MAJOR = (5, 6)
_VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vendor")

# The vendored packages are imported as `ace_bridge._vendor.*` (see bundled.py): sys.path stays as Krita set it.
try:
    from . import bundled  # noqa: F401

    if os.path.isdir(_VENDOR):
        from ._vendor import msgpack, websockets  # noqa: F401
except ImportError as _exc:
    raise ImportError(
        f"ACE Bridge: a bundled package is missing ({_exc.name}). The plugin folder must contain '_vendor/' with "
        "ace_protocol, ace_editor, msgpack and websockets. Install the plugin with `ace-bridge install krita` or "
        "import the zip made by `ace-bridge package krita` (Tools > Scripts > Import Python Plugin from File), not "
        "the source folder."
    ) from _exc


def _check_krita() -> bool:
    """True inside Krita; raises ImportError for an unsupported major version."""
    try:
        from .document import krita_version
    except ImportError:
        return False  # not inside Krita (unit tests import submodules directly)
    version = krita_version()
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = -1
    if major not in SUPPORTED_KRITA_MAJOR:
        raise ImportError(f"ACE Bridge supports Krita 5 and 6; this is Krita {version}.")
    return True


if _check_krita() and not os.environ.get("ACE_BRIDGE_NO_REGISTER"):
    from .extension import register

    register()
