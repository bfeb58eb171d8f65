"""No typed conclusions: a chapter's text states a result only through glued values computed
from the run records. A percentage, a number of points, or a comparison word in a chapter's
markdown is allowed only inside a quotation of the seed log or the paper (lines starting with
'>' or italic quotes *"..."*), in a table of the paper's own numbers (its header names the
paper), or in an explanation of a setting (code, maths); everything else must be a glue reference."""
from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT

CLAIM = re.compile(r"\d+(?:\.\d+)?\s*(?:%|points?\b)|\b(?:better|worse) than\b|\bstronger\b|\bweaker\b"
                   r"|\boutperforms?\b|\bnarrows? the gap\b", re.IGNORECASE)
# what may hold such words: glue references, inline code, maths, italic quotes of the log
# The paper's own numbers and recipe settings that chapters restate, and the numbers the seed
# log itself reports (its runs, not this book's): they are quotations, not results of the book.
PAPER_AND_LOG = [r"\b7\.51 ?%", r"50 % and 75 %", r"below 80 %", r"98–100 %", r"68–69 %", r"74\.2 %", r"25\.8 %", r"65–74 %",
                 r"92\.8 %", r"82\.6 %"]  # the last two: the JPEG copy's own notes
ALLOWED = [re.compile(p, re.S) for p in (r"\{glue:[a-z]+\}`[^`]*`", r"`[^`]*`", r"\$[^$]*\$", r'\*"[^"]*"\*',
                                         r"“[^”]*”", *PAPER_AND_LOG)]


def claims(markdown: str) -> list[str]:
    """The lines of `markdown` that state a number or a comparison outside quotations, the
    paper's tables and glue references."""
    found, table_of_paper, fence = [], False, False
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = not fence
            continue
        if fence or stripped.startswith(">"):
            continue
        if stripped.startswith("|"):
            if not table_of_paper and "paper" in stripped.lower() and not set(stripped) <= set("|-: "):
                table_of_paper = True
            if table_of_paper:
                continue
        else:
            table_of_paper = False
        text = stripped
        for pattern in ALLOWED:
            text = pattern.sub(" ", text)
        if CLAIM.search(text):
            found.append(stripped)
    return found


def test_the_detector_finds_typed_claims_and_spares_quotes_and_glue():
    assert claims("With a full budget SGD is the stronger baseline.") != []
    assert claims("the error is 7.2 % here") != [] and claims("about ten points lower, 10 points") != []
    assert claims("Adam is worse than SGD") != []
    assert claims("> 100 % training accuracy at 69 % test accuracy") == []
    assert claims("error {glue:text}`head_mean` % ± {glue:text}`head_std`") == []
    assert claims('the log: *"1st epoch부터 test acc 40%"*') == []
    assert claims("| network | paper's test error % |\n|---|---|\n| ResNet-20 | 8.75 % |") == []
    assert claims("| run | error |\n|---|---|\n| ours | 8.75 % |") != []


CHAPTERS = sorted((ROOT / "book").glob("0*.ipynb")) + [ROOT / "book" / "intro.ipynb"]


def test_every_chapter_is_checked():
    assert len(CHAPTERS) >= 8 and all(p.is_file() for p in CHAPTERS)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_state_no_typed_results(path):
    cells = json.loads(path.read_text())["cells"]
    found = [line for c in cells if c["cell_type"] == "markdown" for line in claims("".join(c["source"]))]
    assert found == [], f"{path.name} states results in typed text (glue them from the records):\n" + "\n".join(found)


def test_chapter_code_cells_are_short_calls():
    """Notebooks hold narrative and short calls: every visible code cell but the parameters is at
    most 10 lines. A page's own long computation sits in a cell whose input is hidden (tagged
    hide-input), where the page runs it and tests reach it. How wide a line may be is
    tests/test_book.py's check, the page's own measure."""
    problems = []
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            lines = "".join(cell["source"]).split("\n")
            exempt = {"parameters", "hide-input"} & set(cell["metadata"].get("tags", []))
            if cell["cell_type"] == "code" and len(lines) > 10 and not exempt:
                problems.append(f"{path.name} cell {i}: {len(lines)} lines")
    assert not problems, "\n".join(problems)
