"""Item text: assembled from metadata fields, HTML removed, unicode and whitespace normalised.

Empty text stays empty (the feature stage records it as a missing modality); nothing is
invented to fill it.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any, Iterable

_TAG = re.compile(r"<[^>]{0,2000}>")
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")


def clean_text(value: Any) -> str:
    """One string: HTML tags dropped (tags become spaces), entities decoded, NFKC-normalised,
    control characters removed, whitespace collapsed (and none left before punctuation)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (clean_text(v) for v in value) if t)
    text = str(value)
    if "<" in text:
        text = _TAG.sub(" ", text)
    text = html.unescape(text)  # after tag removal: "&lt;b&gt;" is text, not a tag
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACE.sub(" ", text)).strip()


def assemble_text(record: dict, fields: Iterable[str]) -> str:
    """Join the cleaned ``fields`` of a metadata record with ". " (empty parts skipped).

    ``categories`` lists become "a > b > c"; ``store`` is prefixed "Store:" so a brand name
    is not read as part of the description.
    """
    parts = []
    for name in fields:
        value = record.get(name)
        if name == "categories" and isinstance(value, list):
            text = " > ".join(t for t in (clean_text(v) for v in value) if t)
        elif name == "store":
            text = clean_text(value)
            text = f"Store: {text}" if text else ""
        else:
            text = clean_text(value)
        if text:
            parts.append(text.rstrip("."))
    return ". ".join(parts)
