"""The docker's prompt box: the painter types plain words ("make the hat red"), the product writes the ACE++ prompt.

`prompting.painter_prompt` adds the `{image}` token and the task's wording when the job is sent. The "Advanced"
switch sends the text exactly as typed (a raw ACE++ prompt) and shows the task's template as an example. Recent
prompts (history.RecentPrompts, kept in the plug-in settings) are one click away in the "Recent" menu.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .bundled import history
from .model import Settings
from .qt_compat import QtWidgets

PLACEHOLDER = "Describe the change, e.g. “make the hat red”  (Ctrl+Enter generates)"
MENU_TEXT_MAX = 60  # characters of a prompt shown in the Recent menu


def _instant_popup() -> Any:
    """QToolButton's InstantPopup: scoped on PyQt6, short on PyQt5 (whose scoped form varies by version)."""
    button = QtWidgets.QToolButton
    try:
        return button.ToolButtonPopupMode.InstantPopup
    except AttributeError:
        return button.InstantPopup


class PromptBox(QtWidgets.QWidget):
    """Text box, "Recent" menu, "Advanced" switch and (advanced only) the task's raw template.

    `settings` is the docker's Settings: the switch and the recent prompts live there; `save` writes them."""

    def __init__(self, settings: Settings, save: Callable[[], None], parent: Any = None) -> None:
        super().__init__(parent)
        W = QtWidgets
        self.settings = settings
        self._save = save
        self.recent = history.RecentPrompts.from_list(settings.recent_prompts)
        self.task_spec: dict[str, Any] | None = None
        layout = W.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit = W.QPlainTextEdit()
        self.edit.setPlaceholderText(PLACEHOLDER)
        self.edit.setMaximumHeight(80)
        layout.addWidget(self.edit)
        row = W.QHBoxLayout()
        self.recent_button = W.QToolButton()
        self.recent_button.setText("Recent")
        self.recent_button.setToolTip("Prompts you used before: one click puts one back in the box")
        self.recent_menu = W.QMenu(self.recent_button)
        self.recent_button.setMenu(self.recent_menu)
        self.recent_button.setPopupMode(_instant_popup())
        row.addWidget(self.recent_button)
        row.addStretch(1)
        self.advanced = W.QCheckBox("Advanced")
        self.advanced.setToolTip(
            "Send the text exactly as typed: a raw ACE++ prompt, where {image} names the picture being edited"
        )
        self.advanced.setChecked(settings.advanced_prompt)
        self.advanced.toggled.connect(self._on_advanced)
        row.addWidget(self.advanced)
        layout.addLayout(row)
        self.template = W.QLabel("")  # the task's raw ACE++ template, as an example for advanced prompts
        self.template.setWordWrap(True)
        layout.addWidget(self.template)
        self._fill_menu()
        self._on_advanced(settings.advanced_prompt)

    # ------------------------------------------------------------------ what the docker asks
    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)

    def is_advanced(self) -> bool:
        return self.advanced.isChecked()

    def set_task(self, spec: dict[str, Any] | None) -> None:
        self.task_spec = spec
        self._show_template()

    def remember(self, text: str) -> None:
        """After a job was sent: its text goes first in Recent, stored with the settings."""
        self.recent.add(text)
        self.settings.recent_prompts = self.recent.to_list()
        self._fill_menu()
        self._save()

    # ------------------------------------------------------------------ inside
    def _fill_menu(self) -> None:
        self.recent_menu.clear()
        for prompt in self.recent:
            shown = prompt if len(prompt) <= MENU_TEXT_MAX else prompt[: MENU_TEXT_MAX - 1] + "…"
            action = self.recent_menu.addAction(shown)
            action.setToolTip(prompt)
            action.triggered.connect(lambda _checked=False, p=prompt: self.set_text(p))
        self.recent_button.setEnabled(len(self.recent) > 0)

    def _on_advanced(self, on: bool) -> None:
        if self.settings.advanced_prompt != bool(on):
            self.settings.advanced_prompt = bool(on)
            self._save()
        self._show_template()

    def _show_template(self) -> None:
        template = (self.task_spec or {}).get("prompt_template", "")
        self.template.setText(f"ACE++ form, e.g.: {template}" if template else "")
        self.template.setVisible(self.is_advanced() and bool(template))
