#!/usr/bin/env python3
"""ACE Bridge for GIMP 3: Filters ▸ ACE++ ▸ … sends the selection to the local ACE++ daemon.

GIMP runs this file as a plug-in process (the folder must be named like the file). The protocol package and
pure-Python msgpack/websockets sit in `_vendor/` next to it (`ace-bridge install gimp` puts them there).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.join(_HERE, "_vendor"), _HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("MSGPACK_PUREPYTHON", "1")

try:
    import ace_protocol  # noqa: F401
    import acegimp_gimp
except ImportError as exc:  # pragma: no cover - only in a broken install
    sys.stderr.write(
        f"ace-bridge: cannot start ({exc}). The plug-in folder {_HERE} is incomplete: "
        "reinstall it with `ace-bridge install gimp`.\n"
    )
    raise

if __name__ == "__main__":
    acegimp_gimp.main()
