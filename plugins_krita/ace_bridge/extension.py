"""Registers the ACE++ docker and the plugin's actions (shortcuts come from ace_bridge.action)."""

from __future__ import annotations

from . import document as kdoc
from .docker import AceBridgeDocker

DOCKER_ID = "ace_bridge_docker"
ACTIONS = (
    ("ace_bridge_generate", "ACE++ Generate", "on_generate"),
    ("ace_bridge_cancel", "ACE++ Cancel", "on_cancel"),
    ("ace_bridge_apply_again", "ACE++ Apply Result Again", "on_reapply"),
)


def _docker() -> AceBridgeDocker | None:
    for docker in reversed(AceBridgeDocker.instances):
        try:
            if docker.isVisible():
                return docker
        except RuntimeError:  # the C++ side is gone (window closed)
            continue
    return AceBridgeDocker.instances[-1] if AceBridgeDocker.instances else None


class AceBridgeExtension(kdoc.Extension):
    def __init__(self, parent) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        pass

    def createActions(self, window) -> None:  # noqa: N802 - Krita's name
        for action_id, text, method in ACTIONS:
            action = window.createAction(action_id, text, "tools/scripts")
            action.triggered.connect(lambda _=False, m=method: self._run(m))

    @staticmethod
    def _run(method: str) -> None:
        docker = _docker()
        if docker is not None:
            getattr(docker, method)()


def register() -> None:
    app = kdoc.krita_app()
    app.addExtension(AceBridgeExtension(app))
    # Krita 6's sip bindings only know the scoped enum spelling; Krita 5.1-5.3 accept it too.
    dock_right = kdoc.DockWidgetFactoryBase.DockPosition.DockRight
    app.addDockWidgetFactory(kdoc.DockWidgetFactory(DOCKER_ID, dock_right, AceBridgeDocker))
