"""The licensing rules for the API and the pages' hover text: every ID of docs/licensing-rules.md
with its full statement, and the one-line summary of ``meter.licensing.rules`` when implemented.

The document is shipped as package data (``meter.docs``); an editable install made before that
mapping existed reads it from the source tree beside the package.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

from meter.licensing.rules import RULES

DOCUMENT = "licensing-rules.md"
# A rule's table row: | K4 | statement | status |
_ROW = re.compile(r"^\|\s*([A-Z]{1,2}\d+[a-z]?)\s*\|\s*(.+?)\s*\|\s*(.*?)\s*\|\s*$", re.MULTILINE)
_MARKUP = re.compile(r"\*\*|`")


def _document() -> str:
    try:
        return (resources.files("meter.docs") / DOCUMENT).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        return (Path(__file__).resolve().parents[2] / "docs" / DOCUMENT).read_text(encoding="utf-8")


@functools.cache
def all_rules() -> list[dict]:
    """``[{"id", "text", "summary", "status"}]`` in the document's order."""
    out = []
    for rule_id, text, status in _ROW.findall(_document()):
        out.append({"id": rule_id, "text": _MARKUP.sub("", text), "summary": RULES.get(rule_id, ""),
                    "status": _MARKUP.sub("", status)})
    return out


@functools.cache
def by_id() -> dict[str, dict]:
    return {rule["id"]: rule for rule in all_rules()}
