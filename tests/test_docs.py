"""The README stays a two-minute read, and everything it moved to docs/ stays reachable."""

from __future__ import annotations

import re
from pathlib import Path

from wapool.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_is_short_and_keeps_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    assert "make run" in text
    assert "make test" in text  # CI's hook looks for it


def test_every_page_is_linked_from_the_readme() -> None:
    linked = {target for target, _ in LINK.findall((ROOT / "README.md").read_text())}
    assert {f"docs/{page.name}" for page in PAGES} <= linked


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in [ROOT / "README.md", *PAGES]:
        for target, anchor in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists() or (anchor and anchor not in _anchors(path)):
                broken.append(f"{page.name}: {target}#{anchor}")
    assert broken == []


def test_every_setting_is_documented_in_the_configuration_page() -> None:
    text = (ROOT / "docs/configuration.md").read_text()
    names = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert {name for name in names if f"`{name}`" not in text} == set()
