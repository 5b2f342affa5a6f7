"""Prompts in the painter's language: "make the hat red" becomes the task's ACE++ prompt.

ACE++ prompts name the edit image with the `{image}` token and follow the wording its authors trained with (see the
task table's templates and docs/reference: "Remove the apple in {image} mask.", "{image} <caption>" for the FFT
model's keep-structure edits). A painter should not need to know that: `painter_prompt` adds the token and the
task's wording. A text that already contains `{image}` is a raw ACE++ prompt and passes untouched, and the
`advanced` flag sends the text exactly as typed (the raw form behind an "advanced" toggle).
"""

from __future__ import annotations

from .naming import apply_template
from .protocol import tasks

IMAGE_TOKEN = "{image}"

#: local_edit modes that keep the structure inside the mask: the authors' doodle/restore wording (their own
#: local-editing example uses it with contour_repainting).
_STRUCTURE_MODES = ("canny", "mosaic", "contour", "depth", "no_preprocess")


def _sentence(text: str) -> str:
    """First letter up, one final full stop."""
    text = " ".join(text.split()).rstrip(" .")
    return (text[:1].upper() + text[1:] + ".") if text else ""


def painter_prompt(
    task: str, text: str, *, advanced: bool = False, mode: str | None = None, template: str | None = None
) -> str:
    """The ACE++ prompt for `task` from what the painter typed.

    - `advanced`, or a text containing `{image}`: the text as typed (stripped), untouched;
    - instruct and the FFT keep-structure edits (super resolution, colourise, control): `{image} text`;
    - local_edit: repaint and recolor `Text in {image} mask.`, the structure modes the authors' doodle wording;
    - reference_edit: `Text in {image}.`;
    - generation and plain Fill tasks (generate, inpaint, subject, portrait, fft_repaint, fft_reference,
      fft_reference_edit): their templates have no `{image}`, the text goes as a sentence.
    A task this table does not know follows its announced `template` (naming.apply_template)."""
    raw = text.strip()
    if advanced or IMAGE_TOKEN in raw or not raw:
        return raw
    if task in ("instruct", "fft_super_resolution", "fft_colorize", "fft_control"):
        return f"{IMAGE_TOKEN} {' '.join(raw.split())}"
    if task == "local_edit":
        if mode in _STRUCTURE_MODES:
            return (
                "By referencing the mask, restore a partial image from the doodle {image} that aligns with the "
                f'textual explanation: "{" ".join(raw.split()).rstrip(" .")}".'
            )
        return _sentence(raw)[:-1] + f" in {IMAGE_TOKEN} mask."
    if task == "reference_edit":
        return _sentence(raw)[:-1] + f" in {IMAGE_TOKEN}."
    spec = tasks.TASKS.get(task)
    known_template = spec.prompt_template if spec is not None else template
    if known_template is None or IMAGE_TOKEN not in known_template:
        return _sentence(raw) if spec is not None else raw
    return apply_template(known_template, raw)
