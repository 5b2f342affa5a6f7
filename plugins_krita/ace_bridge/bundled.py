"""The shared packages this plugin runs on, imported privately.

An installed plugin carries ace_protocol, ace_editor, msgpack and websockets in its own `_vendor` package
(`ace-bridge install krita` fills it) and imports them from there, relatively: nothing is added to `sys.path`
and Krita's shared interpreter gets no global `msgpack`, `websockets` or `ace_protocol` from us. A source
checkout (the unit tests) has no `_vendor`; there the shared packages are on `sys.path` already.
"""

from __future__ import annotations

import os

VENDOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vendor")

if os.path.isdir(VENDOR_DIR):
    from ._vendor.ace_editor import (
        daemon,
        forms,
        history,
        jobs,
        naming,
        panel_link,
        previews,
        prompting,
        provenance,
        settings,
    )
    from ._vendor.ace_editor.protocol import VERSION
    from ._vendor.ace_protocol import client, geometry, images, messages, tasks
else:  # pragma: no cover - exercised by every unit test; the branch above by the editor tests
    from ace_editor import daemon, forms, history, jobs, naming, panel_link, previews, prompting, provenance, settings  # type: ignore[no-redef]
    from ace_editor.protocol import VERSION  # type: ignore[no-redef]
    from ace_protocol import client, geometry, images, messages, tasks  # type: ignore[no-redef]

__all__ = [
    "VERSION",
    "client",
    "daemon",
    "forms",
    "geometry",
    "history",
    "images",
    "jobs",
    "messages",
    "naming",
    "panel_link",
    "previews",
    "prompting",
    "provenance",
    "settings",
    "tasks",
]
