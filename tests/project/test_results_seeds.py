"""Every table in analyses/RESULTS.md says how many seeds it stands on (issue 20): the text
between the table and the heading or table before it, or the table itself, names its seed(s)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEED = re.compile(r"\bseeds?\b", re.IGNORECASE)


def tables_without_seed_count(text: str) -> list[str]:
    """The first line of every markdown table whose caption (the text since the previous heading
    or table, the heading included) and body never mention a seed."""
    bad, caption, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            if not SEED.search("\n".join(caption + lines[i:j])):
                bad.append(line[:80])
            caption, i = [], j
            continue
        caption = [line] if line.startswith("#") else caption + [line]
        i += 1
    return bad


def test_every_results_table_names_its_seeds():
    for doc in (ROOT / "analyses" / "RESULTS.md", ROOT / "analyses" / "results" / "causal_scores.md"):
        assert tables_without_seed_count(doc.read_text()) == [], doc


def test_the_check_can_fail():
    text = "## A\n\nOne run, seed 0:\n\n| a |\n| --- |\n| 1 |\n\nNext:\n\n| b |\n| --- |\n| 2 |\n"
    assert tables_without_seed_count(text) == ["| b |"]
    assert tables_without_seed_count("## X\n\n| seed | v |\n| --- | --- |\n") == []
