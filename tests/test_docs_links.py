"""Every relative link in README.md and docs/*.md resolves.

A link (``[text](target)``, ``![alt](target)``, ``[label]: target``, or an HTML ``href``/``src``)
whose target has no URL scheme must name a file or folder of the repository, and a ``#fragment``
must name an anchor of the Markdown page it points to: a heading, slugged the way GitHub does it,
or an explicit ``<a id="...">``. Links inside fenced code, inline code and HTML comments are not
links (a commented-out link is a placeholder for a page still to come). Pure Python, no network.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HTML = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']*)["']""", re.I)
_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def strip_non_links(text: str) -> str:
    """The text without fenced code blocks and HTML comments (their contents are not links)."""
    return _COMMENT.sub("", _FENCE.sub("", text))


def markdown_links(text: str) -> list[str]:
    """Every link target of a Markdown page, in order (code and HTML comments excluded)."""
    body = _CODE_SPAN.sub("", strip_non_links(text))
    found = [(m.start(), m.group(1)) for rx in (_INLINE, _REFERENCE, _HTML) for m in rx.finditer(body)]
    return [target for _, target in sorted(found)]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (github-slugger): Markdown links reduced to their text,
    lowercased, every character that is not a letter, mark, number, connector (``_``), space or
    hyphen removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    kept = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN"
                   or unicodedata.category(c) == "Pc")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown page: heading slugs (a repeated slug gets -1, -2, ... as on
    GitHub) and explicit ``<a id=...>`` / ``<a name=...>``."""
    body = strip_non_links(text)
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(body):
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    out.update(m.group(1) for m in _ANCHOR.finditer(body))
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` that do not resolve, each as 'target (why)'."""
    bad = []
    text = page.read_text(encoding="utf-8")
    for target in markdown_links(text):
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.is_relative_to(root.resolve()):
            bad.append(f"{target} (outside the repository)")
        elif not dest.exists():
            bad.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target} (no anchor #{fragment} in {dest.relative_to(root.resolve())})")
    return bad


# --- the helpers against hand-written pages ---------------------------------------------------

def test_links_found_and_code_and_comments_skipped():
    page = ("See [a](docs/a.md#x) and ![img](img/p.png \"title\").\n"
            "[ref]: other.md\n"
            "<a href=\"h.md\">h</a> <img src=\"i.png\">\n"
            "`[not](code.md)`\n"
            "<!-- [later](coming.md) -->\n"
            "```bash\n[no](fenced.md)\n```\n"
            "[web](https://example.org) [nested [x]](n.md)\n")
    assert markdown_links(page) == ["docs/a.md#x", "img/p.png", "other.md", "h.md", "i.png",
                                    "https://example.org", "n.md"]


def test_github_slugs():
    assert github_slug("Weight differences: `collect_param_stats.py`") == \
        "weight-differences-collect_param_statspy"
    assert github_slug("The whole demo pipeline: `pipeline.sh --demo`") == \
        "the-whole-demo-pipeline-pipelinesh---demo"
    assert github_slug("cb vs rr") == "cb-vs-rr"
    assert github_slug("See [the docs](x.md) (v2)") == "see-the-docs-v2"
    page = "# Flags\n## Flags\n```\n# not a heading\n```\n<a id=\"custom\"></a>\n"
    assert anchors(page) == {"flags", "flags-1", "custom"}


def test_broken_links_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Real heading\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/b.md#real-heading) [gone](docs/c.md) [frag](docs/b.md#nope) "
                    "[self](#top) [out](../x.md)\n# Top\n", encoding="utf-8")
    assert broken_links(page, tmp_path) == ["docs/c.md (no such file)",
                                            "docs/b.md#nope (no anchor #nope in docs/b.md)",
                                            "../x.md (outside the repository)"]


# --- the repository's own pages ----------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.exists()
    assert broken_links(page) == []
