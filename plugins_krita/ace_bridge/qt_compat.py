"""The only module that imports PyQt: picks PyQt5 (Krita 5) or PyQt6 (Krita 6) and smooths over the differences.

Choice, first match wins: `ACE_BRIDGE_QT` (5 or 6, for tests), `pykrita.qt_major_version()` (Krita 6 and late
5.x builds), then whichever of PyQt5 / PyQt6 imports. Everything else in the plugin imports Qt names from here.
"""

from __future__ import annotations

import importlib
import os
from typing import Any


def _wanted_major() -> int | None:
    env = os.environ.get("ACE_BRIDGE_QT", "").strip()
    if env in ("5", "6"):
        return int(env)
    try:
        import pykrita  # type: ignore[import-not-found]

        return int(pykrita.qt_major_version())
    except Exception:  # older Krita has no qt_major_version(); outside Krita there is no pykrita
        return None


def _load(major: int | None) -> tuple[int, Any, Any, Any]:
    order = [major] if major else [5, 6]
    errors = []
    for m in order:
        try:
            core = importlib.import_module(f"PyQt{m}.QtCore")
            gui = importlib.import_module(f"PyQt{m}.QtGui")
            widgets = importlib.import_module(f"PyQt{m}.QtWidgets")
            return m, core, gui, widgets
        except ImportError as exc:
            errors.append(f"PyQt{m}: {exc}")
    raise ImportError("ACE Bridge needs PyQt5 (Krita 5) or PyQt6 (Krita 6); " + "; ".join(errors))


QT_MAJOR, QtCore, QtGui, QtWidgets = _load(_wanted_major())

Qt = QtCore.Qt
QObject = QtCore.QObject
QTimer = QtCore.QTimer
QThread = QtCore.QThread
Signal = QtCore.pyqtSignal
QImage = QtGui.QImage
QPixmap = QtGui.QPixmap
QIcon = QtGui.QIcon
QKeySequence = QtGui.QKeySequence
QAction = QtGui.QAction if QT_MAJOR == 6 else QtWidgets.QAction


def enum(path: str) -> Any:
    """Resolve a scoped enum path such as ``"Qt.AlignmentFlag.AlignCenter"`` on either PyQt.

    PyQt6 only knows the scoped form; PyQt5 knows the short form (``Qt.AlignCenter``) and, for most enums, the
    scoped one too. Try scoped first, then drop the enum's class name."""
    parts = path.split(".")
    roots = {
        "Qt": Qt,
        "QImage": QImage,
        "QSizePolicy": QtWidgets.QSizePolicy,
        "QFrame": QtWidgets.QFrame,
        "QAbstractItemView": QtWidgets.QAbstractItemView,
        "QListView": QtWidgets.QListView,
        "QDialogButtonBox": QtWidgets.QDialogButtonBox,
        "QLineEdit": QtWidgets.QLineEdit,
        "QMessageBox": QtWidgets.QMessageBox,
        "QPlainTextEdit": QtWidgets.QPlainTextEdit,
    }
    root = roots.get(parts[0])
    if root is None:
        raise KeyError(f"qt_compat.enum: unknown root {parts[0]!r}")
    obj: Any = root
    try:
        for part in parts[1:]:
            obj = getattr(obj, part)
        return obj
    except AttributeError:
        pass
    if len(parts) == 3:
        return getattr(root, parts[2])
    raise AttributeError(f"qt_compat.enum: cannot resolve {path}")


FORMAT_ARGB32 = enum("QImage.Format.Format_ARGB32")
FORMAT_RGBA8888 = enum("QImage.Format.Format_RGBA8888")
ALIGN_CENTER = enum("Qt.AlignmentFlag.AlignCenter")
KEEP_ASPECT = enum("Qt.AspectRatioMode.KeepAspectRatio")
SMOOTH = enum("Qt.TransformationMode.SmoothTransformation")
USER_ROLE = enum("Qt.ItemDataRole.UserRole")
QUEUED_CONNECTION = enum("Qt.ConnectionType.QueuedConnection")
ICON_MODE = enum("QListView.ViewMode.IconMode")
PASSWORD_ECHO = enum("QLineEdit.EchoMode.Password")


def qimage_from_bytes(data: bytes, width: int, height: int, fmt: Any = FORMAT_ARGB32) -> Any:
    """A QImage that owns a copy of 4-byte-per-pixel `data` (BGRA for ARGB32 on little-endian, RGBA for RGBA8888)."""
    img = QImage(data, width, height, width * 4, fmt)
    return img.copy()  # detach from the Python buffer, which may be freed


def qimage_bytes(img: Any) -> bytes:
    """The raw bytes of a QImage (Qt5 `byteCount`, Qt6 `sizeInBytes`)."""
    size = img.sizeInBytes() if hasattr(img, "sizeInBytes") else img.byteCount()
    ptr = img.constBits()
    if hasattr(ptr, "setsize"):
        ptr.setsize(size)
    return bytes(ptr)[:size] if ptr is not None else b""


def preview_pixmap(data: bytes, max_side: int = 256) -> Any:
    """A QPixmap of an encoded (JPEG/PNG) progress preview, scaled down to at most `max_side`; None if undecodable."""
    if not data:
        return None
    img = QImage.fromData(bytes(data))
    if img.isNull():
        return None
    if max(img.width(), img.height()) > max_side:
        img = img.scaled(max_side, max_side, KEEP_ASPECT, SMOOTH)
    return QPixmap.fromImage(img)


def exec_dialog(dialog: Any) -> int:
    """`exec()` in PyQt6, `exec_()` in PyQt5."""
    run = getattr(dialog, "exec", None) or dialog.exec_
    return run()


def key_sequence(text: str) -> Any:
    return QKeySequence(text)
