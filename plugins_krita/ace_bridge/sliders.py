"""A slider for a fractional task parameter (strength, 0.05-1.0), built from its task-table field.

It answers `currentData()` like the docker's choice boxes, so the docker reads every option widget the same way."""

from __future__ import annotations

from typing import Any

from .bundled import forms
from .qt_compat import QtWidgets, enum

HORIZONTAL = enum("Qt.Orientation.Horizontal")
#: Slider positions per 1.0 of the value: steps of 0.01.
SCALE = 100


class FractionSlider(QtWidgets.QWidget):
    """A horizontal slider over the field's range with its value shown beside it."""

    def __init__(self, field: forms.Field, parent: Any = None) -> None:
        super().__init__(parent)
        self.field = field
        row = QtWidgets.QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.slider = QtWidgets.QSlider(HORIZONTAL)
        self.slider.setRange(round((field.minimum or 0.0) * SCALE), round((field.maximum or 1.0) * SCALE))
        self.slider.setSingleStep(1)
        self.slider.setPageStep(5)
        self.label = QtWidgets.QLabel()
        self.label.setMinimumWidth(32)
        self.slider.valueChanged.connect(self._show)
        row.addWidget(self.slider, 1)
        row.addWidget(self.label)
        self.setValue(float(field.default if field.default is not None else field.maximum or 1.0))

    def setValue(self, value: float) -> None:  # noqa: N802 - Qt's naming, as the other option widgets
        self.slider.setValue(round(float(value) * SCALE))
        self._show()

    def value(self) -> float:
        return self.slider.value() / SCALE

    def currentData(self) -> float:  # noqa: N802 - the docker reads option widgets through this name
        return self.value()

    def _show(self, *_: Any) -> None:
        self.label.setText(f"{self.value():.2f}")
