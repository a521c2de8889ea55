"""The README fits its reader (at most 350 lines) and every page or file it or docs/ links exists."""
import re
from pathlib import Path
from urllib.parse import unquote

from conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
MAX_README_LINES = 350


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, anchor = unquote(target).partition("#")
        dest = (page.parent / path).resolve()
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    return broken


def test_readme_fits_on_a_few_screens():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move detail into docs/"


def test_readme_links_docs_pages_that_exist():
    links = relative_links(ROOT / "README.md")
    assert any(link.startswith("docs/") for link in links)
    assert broken_links(ROOT / "README.md") == []


def test_every_relative_link_inside_docs_exists():
    pages = sorted((ROOT / "docs").rglob("*.md"))
    assert pages
    assert [b for page in pages for b in broken_links(page)] == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / unquote(t).partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    orphans = [p.relative_to(ROOT) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert orphans == [], f"docs pages no one can find from the README: {orphans}"
