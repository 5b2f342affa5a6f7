#!/usr/bin/env python3
"""ACE Bridge for GIMP 3: Filters ▸ ACE++ ▸ … sends the selection to the local ACE++ daemon.

GIMP runs this file as a plug-in process (the folder must be named like the file). The protocol package and
pure-Python msgpack/websockets sit in the `_vendor` package next to it (`ace-bridge install gimp` puts them there).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# The plug-in's own modules (a script's folder is on sys.path anyway, unless Python runs with safe paths). The
# vendored packages are not added: they live in the `_vendor` package here and import one another relatively.
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

try:
    import acegimp_bundled  # noqa: F401
    import acegimp_gimp

    if os.path.isdir(acegimp_bundled.VENDOR_DIR):
        from _vendor import msgpack, websockets  # noqa: F401
except ImportError as exc:  # pragma: no cover - only in a broken install
    sys.stderr.write(
        f"ace-bridge: cannot start ({exc}). The plug-in folder {_HERE} is incomplete: "
        "reinstall it with `ace-bridge install gimp`.\n"
    )
    raise

if __name__ == "__main__":
    acegimp_gimp.main()
