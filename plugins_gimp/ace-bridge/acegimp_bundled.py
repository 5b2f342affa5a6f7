"""The shared packages this plug-in runs on, imported privately.

An installed plug-in carries ace_protocol, ace_editor, msgpack and websockets in its `_vendor` package
(`ace-bridge install gimp` fills it). GIMP starts the plug-in as a script, so its own folder is on `sys.path`
and `_vendor` is a package there; the packages inside import one another relatively, and nothing else is added
to `sys.path`. A source checkout (the unit tests) has no `_vendor`: the shared packages are on `sys.path`.
"""

from __future__ import annotations

import os

VENDOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vendor")

if os.path.isdir(VENDOR_DIR):
    from _vendor.ace_editor import (
        daemon,
        daemon_history,
        forms,
        history,
        inbox,
        jobs,
        naming,
        prompting,
        provenance,
        settings,
    )
    from _vendor.ace_editor.protocol import VERSION
    from _vendor.ace_protocol import client, geometry, images, messages, tasks
else:  # pragma: no cover - exercised by every unit test; the branch above by the editor tests
    from ace_editor import (  # type: ignore[no-redef]
        daemon,
        daemon_history,
        forms,
        history,
        inbox,
        jobs,
        naming,
        prompting,
        provenance,
        settings,
    )
    from ace_editor.protocol import VERSION  # type: ignore[no-redef]
    from ace_protocol import client, geometry, images, messages, tasks  # type: ignore[no-redef]

__all__ = [
    "VERSION",
    "client",
    "daemon",
    "daemon_history",
    "forms",
    "geometry",
    "history",
    "inbox",
    "images",
    "jobs",
    "messages",
    "naming",
    "prompting",
    "provenance",
    "settings",
    "tasks",
]
