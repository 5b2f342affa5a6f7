"""Names of result layers and the prompt templates of the task table."""

from __future__ import annotations

import re

NAME_PROMPT_CHARS = 40
LAYER_PREFIX = "[ACE++]"

_IMAGE_REF = re.compile(r"(\b(in|of|on|to)\s+)?\{image\}(\s+mask)?\.?", re.IGNORECASE)


def short_prompt(prompt: str, limit: int = NAME_PROMPT_CHARS) -> str:
    """The prompt without its `{image}` marker, on one line, cut to `limit` characters with an ellipsis."""
    text = " ".join(_IMAGE_REF.sub(" ", prompt).split()).strip(" .")
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def layer_name(task: str, prompt: str, seed: int | None, index: int = 0, count: int = 1) -> str:
    """`[ACE++] local_edit: prompt… (seed 42)`, with `#2/3` for the images of a multi-image job."""
    name = f"{LAYER_PREFIX} {task}: {short_prompt(prompt)}"
    if seed is not None:
        name += f" (seed {seed})"
    return name + (f" #{index + 1}/{count}" if count > 1 else "")


def group_name(task: str, prompt: str, seed: int | None, count: int) -> str:
    """The layer group that holds the `count` images of one job."""
    return layer_name(task, prompt, seed) + f" ×{count}"


def apply_template(template: str, instruction: str) -> str:
    """Fill the task's prompt template: the user's text replaces the example, `{image}` stays where it was.

    A user text that already contains `{image}` is sent as-is."""
    instruction = instruction.strip()
    if "{image}" in instruction or "{image}" not in template:
        return instruction
    head, _, tail = template.partition("{image}")
    if not head.strip():
        return "{image} " + instruction
    return instruction + " {image}" if not tail.strip() else instruction.rstrip(".") + " in {image}."
