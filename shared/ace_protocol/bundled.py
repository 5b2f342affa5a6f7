"""msgpack and websockets for the protocol package: private copies inside a plug-in, else the installed ones.

An editor plug-in carries ace_protocol, msgpack and websockets side by side in its own `_vendor` package
(`ace_bridge._vendor` in Krita). There they are imported relatively, so they stay private to the plug-in:
nothing goes onto `sys.path`, and Krita's one shared interpreter never meets a second `msgpack` or
`websockets` under the global names that another plug-in may import. Outside a plug-in (daemon, command line,
tests) ace_protocol is a top-level package and uses the installed libraries.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

#: True when this package lives inside a plug-in's private `_vendor` package.
VENDORED = "." in (__package__ or "")

# Type checkers read the installed libraries' branch.
if TYPE_CHECKING or not VENDORED:
    import msgpack
    import websockets
else:
    from .. import msgpack, websockets  # siblings in the plug-in's `_vendor`

__all__ = ["VENDORED", "msgpack", "websockets", "websockets_module"]


def websockets_module(name: str) -> ModuleType:
    """A submodule of whichever websockets this package uses, e.g. `websockets_module("sync.client")`."""
    return importlib.import_module(f"{websockets.__name__}.{name}")
