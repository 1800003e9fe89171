"""The licensing rules' text, by ID, from docs/licensing-rules.md as installed with the package.

The document ships as package data (``meter.docs``, the repository's ``docs/``), so `meter explain
C4` reads the very text the repository holds, as the API's ``/api/v1/rules`` does
(``meter.admin.rules``). A rule
is a table row ``| C4 | <rule> | <status> |``; a resolution the project took where the guide reads
two ways (``Resolution (K4): ...`` or a bullet ``- **C5, "negotiated".** ...``) is added to the
rules its lead names.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

DOCUMENT = "licensing-rules.md"
_ID = r"[A-Z]\d{1,2}"
_ROW = re.compile(rf"^\|\s*({_ID})\s*\|(.*?)\|(.*?)\|\s*$")
_RESOLUTION = re.compile(r"^(?:Resolution \(([^)]*)\):|- \*\*([^*]*?)\*\*)")


class RuleNotFound(LookupError):
    pass


def document_text() -> str:
    try:
        return (resources.files("meter.docs") / DOCUMENT).read_text(encoding="utf-8")
    except ModuleNotFoundError:  # an editable install made before meter.docs existed
        return (Path(__file__).resolve().parents[1] / "docs" / DOCUMENT).read_text(encoding="utf-8")


@functools.cache
def rules() -> dict[str, str]:
    """``{rule ID: its text}`` in document order; the text is the rule, its status and the
    resolutions taken for it, one paragraph each."""
    return parse(document_text())


def parse(text: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    blocks = _blocks(text.splitlines())
    for block in blocks:
        row = _ROW.match(block)
        if row:
            rule_id, rule, status = row[1], row[2].strip(), row[3].strip()
            found.setdefault(rule_id, []).append(f"{rule}\nStatus: {status}")
            continue
        lead = _RESOLUTION.match(block)
        if lead:
            for rule_id in re.findall(rf"\b{_ID}\b", lead[1] or lead[2] or ""):
                found.setdefault(rule_id, []).append("Resolution taken: " + _plain(block))
    return {rule_id: "\n".join(parts) for rule_id, parts in found.items() if not parts[0].startswith("Resolution")}


def explain(rule_id: str, known: dict[str, str] | None = None) -> tuple[str, str]:
    known = rules() if known is None else known
    key = rule_id.strip().upper()
    if key not in known:
        raise RuleNotFound(f"no rule {rule_id!r} (rules: {', '.join(known)})")
    return key, known[key]


def _blocks(lines: list[str]) -> list[str]:
    """Table rows one by one; paragraphs and list items joined into one line each."""
    out: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            out.append(" ".join(s.strip() for s in current))
            current.clear()

    for line in lines:
        if line.startswith("|"):
            flush()
            out.append(line)
        elif not line.strip() or line.startswith("#") or line.startswith("- ") or line.startswith("```"):
            flush()
            if line.startswith("- "):
                current.append(line)
        else:
            current.append(line)
    flush()
    return out


def _plain(text: str) -> str:
    text = re.sub(r"^(- |Resolution \([^)]*\):\s*)", "", text)
    return text.replace("**", "")
