"""The protocol package this core runs on: the private copy beside it in a plug-in's `_vendor` package, or the
top-level `ace_protocol` of a source checkout (tests). Every module here imports the protocol through this one."""

from __future__ import annotations

if "." in (__package__ or ""):  # vendored: `<plugin>._vendor.ace_editor` next to `<plugin>._vendor.ace_protocol`
    from .. import ace_protocol  # type: ignore[no-redef]
    from ..ace_protocol import client, errors, geometry, images, messages, tasks  # type: ignore[no-redef]
else:
    import ace_protocol  # type: ignore[no-redef]
    from ace_protocol import client, errors, geometry, images, messages, tasks  # type: ignore[no-redef]

#: The plug-ins carry the version of the protocol package they were built with: one version for the project.
VERSION: str = ace_protocol.__version__

__all__ = ["VERSION", "ace_protocol", "client", "errors", "geometry", "images", "messages", "tasks"]
