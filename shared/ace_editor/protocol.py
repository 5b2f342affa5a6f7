"""The protocol package this core runs on: the private copy beside it in a plug-in's `_vendor` package, or the
top-level `ace_protocol` of a source checkout (tests). Every module here imports the protocol through this one."""

from __future__ import annotations

from typing import TYPE_CHECKING

# Type checkers read the top-level branch; at run time the vendored one is taken inside a plug-in, where this is
# `<plugin>._vendor.ace_editor.protocol` next to `<plugin>._vendor.ace_protocol`.
if TYPE_CHECKING or "." not in (__package__ or ""):
    import ace_protocol
    from ace_protocol import auth, client, discovery, errors, geometry, images, messages, tasks
else:
    from .. import ace_protocol
    from ..ace_protocol import auth, client, discovery, errors, geometry, images, messages, tasks

#: The plug-ins carry the version of the protocol package they were built with: one version for the project.
VERSION: str = ace_protocol.__version__

__all__ = [
    "VERSION",
    "ace_protocol",
    "auth",
    "client",
    "discovery",
    "errors",
    "geometry",
    "images",
    "messages",
    "tasks",
]
