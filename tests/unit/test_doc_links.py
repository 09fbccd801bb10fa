"""Every relative link in the project's Markdown resolves, anchors included: the docs
link topics to the one place each is described, so a moved heading must not leave a
reader at a dead end."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", ".fedscreen", "node_modules"}
FENCED = re.compile(r"^```.*?^```", flags=re.S | re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts))


@cache
def anchors(path: Path) -> frozenset[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes,
    repeats numbered."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCED.sub("", path.read_text()).splitlines():
        if match := HEADING.match(line):
            slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    found |= set(re.findall(r'<a (?:id|name)="([^"]+)"', path.read_text()))
    return frozenset(found)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for match in LINK.finditer(FENCED.sub("", path.read_text())):
        target = match.group(1)
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{path.relative_to(root)}: no {target}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{path.relative_to(root)}: no heading for {target}")
    return broken


def test_every_relative_link_in_the_docs_resolves() -> None:
    files = markdown_files()
    assert len(files) > 10
    assert [b for f in files for b in broken_links(f)] == []


def test_the_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text("# Quotas\n[ok](#quotas) [gone](b.md) [moved](#limits)\n")
    assert broken_links(page, tmp_path) == ["a.md: no b.md", "a.md: no heading for #limits"]
