"""README is a doorway, not the manual: short, linking every docs page, and no link in README or docs/ points at
a file or a heading that isn't there."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200
PAGES = sorted(DOCS.glob("*.md"))
LINKED = [README, *sorted(DOCS.rglob("*.md"))]  # every markdown file whose links must hold
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)  # code blocks: their brackets are code, not links


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def local(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ... are not checked here


def slug(heading: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M)}


def test_readme_is_under_200_lines():
    lines = len(README.read_text().splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines: move a subject into a docs/ page"


def test_every_docs_page_is_linked_from_readme():
    assert len(PAGES) >= 10, [p.name for p in PAGES]  # the subjects of issue 23, architecture, known issues
    targets = {(README.parent / t.split("#")[0]).resolve() for t in links(README) if local(t)}
    missing = [p.name for p in PAGES if p.resolve() not in targets]
    assert not missing, f"docs pages README.md does not link: {missing}"


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_something_that_exists(page):
    broken = []
    for target in filter(local, links(page)):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_checks_see_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[gone](missing.md) [here](#title) [web](https://example.com)\n```\n[x](code.md)\n```\n")
    assert [t for t in links(page) if local(t)] == ["missing.md", "#title"]
    assert anchors(page) == {"title"}
