"""The rules inside the project: docs/licensing-rules.md ships with the package (`meter explain`),
every rule ID in it is explainable, and nothing in the README or the code points outside the
repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from meter.cli import main
from meter.rulebook import RuleNotFound, document_text, explain, rules

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "licensing-rules.md"


def ids_in_document() -> list[str]:
    """Every rule ID the document defines: the first cell of a table row."""
    return re.findall(r"^\|\s*([A-Z]\d{1,2})\s*\|", DOC.read_text(), flags=re.M)


def test_the_shipped_document_is_the_repository_one():
    assert document_text() == DOC.read_text()


def test_every_rule_id_in_the_document_is_explainable(capsys):
    """`meter explain <ID>` prints the rule's text for each of L1-L4, K1-K6, C1-C11, R1-R11, P1-P6, S1-S14."""
    ids = ids_in_document()
    assert len(ids) >= 50 and len(set(ids)) == len(ids)
    assert set(ids) == set(rules())
    for rule_id in ids:
        assert main(["explain", rule_id.lower()]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{rule_id}: ") and "Status:" in out, rule_id


def test_c5_explain_carries_the_resolution_taken(capsys):
    """C5: where the guide is ambiguous, the resolution: a port 0 in the offer or the answer is not negotiated."""
    assert main(["explain", "C5"]) == 0
    out = capsys.readouterr().out
    assert "Resolution taken" in out and "port of 0" in out and "offer" in out and "answer" in out


def test_k4_explain_and_an_unknown_id():
    rule_id, text = explain("k4")
    assert rule_id == "K4" and "65" in text and "Resolution taken" in text
    with pytest.raises(RuleNotFound, match="no rule 'Z9'"):
        explain("Z9")


def test_nothing_in_the_readme_or_the_code_points_outside_the_repository():
    """No tracked file names the machine's shared folder or work tree (the pattern is spelt in two
    pieces so that this file does not match it): the rules live in docs/."""
    pattern = "shared" + "/" + r"\|" + "/" + "work" + "/"
    found = subprocess.run(["git", "grep", "-n", pattern], cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 1 and found.stdout == "", found.stdout
    assert "docs/licensing-rules.md" in (ROOT / "README.md").read_text()
