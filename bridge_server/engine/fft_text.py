"""The FFT model's text input, as its authors trained and ran it (pure, no torch).

The LoRAs run on the authors' diffusers script: raw prompt, T5 tokenizer plus ONE added token `{image}` (id 32100 on
the real T5). The FFT model (`ace_plus_fft.safetensors`) was trained and is run by the authors on their scepter stack
instead (config/ace_plus_fft.yaml in ali-vilab/ACE_plus, scepter's `HFEmbedder` + `T5PlusClipFluxEmbedder`):
- every prompt is cleaned (`CLEAN: whitespace`) before BOTH text encoders see it: ftfy's `fix_text`, HTML entities
  unescaped twice, stripped, every run of whitespace made one space;
- the T5 tokenizer is loaded with 14 `ADDED_IDENTIFIER`s, in this order, appended after the base vocabulary, so
  `<img>` takes 32100 and `{image}` 32101 on the real T5 (32128 embedding rows, so no resize).
The FFT model learnt `{image}` at that id; giving it the LoRA path's 32100 (its `<img>`) changes what it reads.
"""

from __future__ import annotations

import html
import re
from typing import Any

import ftfy

ADDED_IDENTIFIERS: tuple[str, ...] = (
    "<img>",
    "{image}",
    "{caption}",
    "{mask}",
    "{ref_image}",
    *(f"{{image{i}}}" for i in range(1, 10)),
)
# The authors use the `regex` module's \s; after ftfy and html.unescape (which drop U+001C..U+001F, the only
# characters where the two modules' \s differ) the standard library's \s matches the same characters.
_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """The authors' `whitespace` cleaning: ftfy, HTML unescaped twice, stripped, whitespace runs -> one space."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()


def add_identifiers(tokenizer: Any, embedding_rows: int) -> Any:
    """Add the 14 identifiers to a FRESH copy of the base T5 tokenizer (nothing added yet), as special tokens in the
    authors' order, and check they got the ids the FFT model was trained with: consecutive, right after the base
    vocabulary (32100..32113 on the real T5), and inside the text encoder's embedding table. Returns the tokenizer.

    `tokenizer.add_tokens(..., special_tokens=True)` rather than the authors' `additional_special_tokens=` keyword:
    transformers 5 silently ignores that keyword for tokenizer folders it saved itself."""
    base = len(tokenizer)
    tokenizer.add_tokens(list(ADDED_IDENTIFIERS), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_IDENTIFIERS))
    expected = list(range(base, base + len(ADDED_IDENTIFIERS)))
    if ids != expected or expected[-1] >= embedding_rows:
        raise ValueError(
            f"the T5 tokenizer gives the FFT model's identifiers ids {ids}, expected {expected[0]}..{expected[-1]} "
            f"within {embedding_rows} embedding rows; the tokenizer_2 folder is not the stock FLUX.1-Fill-dev one"
        )
    return tokenizer
